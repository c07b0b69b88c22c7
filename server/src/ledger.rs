//! The KIdC ledger: every code and registration number this server ever
//! reserved, kept outside its database.
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
//! **Registration numbers** (`office/year/sequence`) are counted, not
//! drawn, by the database's `registration_counters`, which a restore winds
//! back: counting on would give a number issued after the backup to a
//! second record. So the ledger keeps every number issued, with its record
//! (`registration_numbers`, one number per record and one record per
//! number), reserved in the same ledger transaction and sync as the codes,
//! before the database commits. Registering reads the ledger
//! (`ingest::register`): a record the ledger holds a number for gets that
//! number again (and the database's counter is raised to it); any other
//! record gets one above both the database's counter and the highest
//! number the ledger holds for the office and year (the counter follows).
//! So a restored database needs no repair of its counters, at restore or
//! at start: they are corrected by the ledger on the next registration of
//! each office and year. The numbers of a change set rolled back are not
//! reserved (the counter went back with it, and counts them again).
//! [`reconcile`] imports into the ledger the numbers of the registry's
//! event log it lacks (a ledger made before it kept numbers, or a crash
//! that lost its last reservation but not the database's commit), reading
//! the log only when the ledger holds fewer numbers than it.
//!
//! The ledger also keeps what a restore must not undo: every device
//! enrolment and revocation, every removal of a staff member from a
//! roster and every revocation of an API key, each written (and synced)
//! before the database commits it. [`reconcile`] runs at every start and at
//! the end of `crvs-server restore`: it imports into the ledger what the
//! database holds and the ledger lacks (ledgers made before these tables),
//! and removes again, or revokes again, whoever the database brought back.
//!
//! If the whole machine is lost, the ledger goes with the database (keep
//! the data folder on a volume that is itself replicated, or copy the
//! ledger off the machine often: it holds codes, registration numbers and
//! record ids only). The tablets'
//! [`crvs_schema::evidence::IssuanceProof`]s then rebuild the codes they
//! hold; registration numbers issued after the backup have no such proof,
//! and may be issued again. See ARCHITECTURE.md, "Recovery" (the restore
//! invariants).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use crvs_schema::Kidc;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::storage::{StaffRemoval, Storage, StorageError};

/// The ledger's file name inside the data folder.
pub const LEDGER_FILE: &str = "kidc-ledger.db";

/// The ledger's numbered migrations (see [`crvs_sqlite`]). The first keeps
/// its `IF NOT EXISTS`: ledgers made before the ledger had numbered
/// migrations hold its tables at `user_version` 0, and take it as is.
const MIGRATIONS: &[crvs_sqlite::Migration] = &[SCHEMA_1, SCHEMA_2, SCHEMA_3];

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

/// Version 2: removals from the staff rosters and revocations of API
/// keys, so that a restore from an older backup never puts a removed
/// person back on a roster nor makes a revoked key work again. A person
/// may be removed, added again and removed again: one row per removal.
const SCHEMA_2: &str = "
CREATE TABLE staff_removals (
    office      TEXT NOT NULL,
    staff_key   TEXT NOT NULL,
    removed_at  BIGINT NOT NULL,
    by_operator TEXT NOT NULL,
    PRIMARY KEY (office, staff_key, removed_at)
);
CREATE TRIGGER staff_removals_no_update BEFORE UPDATE ON staff_removals
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER staff_removals_no_delete BEFORE DELETE ON staff_removals
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TABLE api_key_revocations (
    key_id     TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);
CREATE TRIGGER api_key_revocations_no_update BEFORE UPDATE ON api_key_revocations
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER api_key_revocations_no_delete BEFORE DELETE ON api_key_revocations
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
";

/// Version 3: every registration number issued (office / year /
/// sequence), with the record it went to, reserved before the database
/// commits it: a restore from an older backup winds the database's
/// counters back, and the next number is then counted from the highest
/// the ledger holds, never from the restored counter alone. One number
/// per record, one record per number.
const SCHEMA_3: &str = "
CREATE TABLE registration_numbers (
    office      TEXT NOT NULL,
    year        INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    record_id   TEXT NOT NULL UNIQUE,
    reserved_at BIGINT NOT NULL,
    PRIMARY KEY (office, year, seq)
);
CREATE TRIGGER registration_numbers_no_update BEFORE UPDATE ON registration_numbers
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
END;
CREATE TRIGGER registration_numbers_no_delete BEFORE DELETE ON registration_numbers
BEGIN
    SELECT RAISE(ABORT, 'the ledger is append-only');
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

/// A registration number: office / year / sequence (`171003/2026/000042`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistrationNumber {
    /// The registering office.
    pub office: String,
    /// The year of registration.
    pub year: i32,
    /// The sequence, counted per office and year from 1.
    pub seq: u64,
}

impl RegistrationNumber {
    /// Reads `office/year/sequence`; `None` when it is not one.
    pub fn parse(s: &str) -> Option<RegistrationNumber> {
        let mut parts = s.split('/');
        let (office, year, seq) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || office.is_empty() {
            return None;
        }
        Some(RegistrationNumber {
            office: office.to_owned(),
            year: year.parse().ok()?,
            seq: seq
                .parse()
                .ok()
                .filter(|&n: &u64| n > 0 && i64::try_from(n).is_ok())?,
        })
    }
}

impl std::fmt::Display for RegistrationNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{:06}", self.office, self.year, self.seq)
    }
}

/// What one commit reserves in the ledger, in one ledger transaction: the
/// KIdCs and the registration numbers it issued, each with its record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservations {
    /// KIdCs issued.
    pub codes: Vec<(Kidc, Uuid)>,
    /// Registration numbers issued.
    pub numbers: Vec<(RegistrationNumber, Uuid)>,
}

impl Reservations {
    /// Nothing to reserve.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty() && self.numbers.is_empty()
    }

    /// Takes `other`'s reservations too.
    pub fn extend_from(&mut self, other: &Reservations) {
        self.codes.extend_from_slice(&other.codes);
        self.numbers.extend_from_slice(&other.numbers);
    }
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

    /// Reserves codes and registration numbers, durably, in one
    /// transaction. A code or number already reserved for the same record
    /// is kept; one reserved for another record, or a second number for a
    /// record, fails the whole call (the caller checked with
    /// [`KidcLedger::holder_of`] and [`KidcLedger::number_for`] under the
    /// single writer, so that means the ledger was changed behind the
    /// server's back).
    pub fn reserve(&self, entries: &Reservations, now_ms: i64) -> Result<(), StorageError> {
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
    pub fn reserve_unsynced(&self, entries: &Reservations, now_ms: i64) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut find = tx.prepare_cached("SELECT record_id FROM reserved WHERE kidc = ?1")?;
            let mut insert =
                tx.prepare_cached("INSERT INTO reserved (kidc, record_id, reserved_at) VALUES (?1, ?2, ?3)")?;
            for (kidc, record) in &entries.codes {
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
        {
            let mut holder_of = tx.prepare_cached(
                "SELECT record_id FROM registration_numbers WHERE office = ?1 AND year = ?2 AND seq = ?3",
            )?;
            let mut held_by = tx.prepare_cached("SELECT 1 FROM registration_numbers WHERE record_id = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO registration_numbers (office, year, seq, record_id, reserved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (n, record) in &entries.numbers {
                let seq =
                    i64::try_from(n.seq).map_err(|_| StorageError::Corrupt("a registration sequence"))?;
                let holder: Option<String> = holder_of
                    .query_row(params![n.office, n.year, seq], |r| r.get(0))
                    .optional()?;
                match holder {
                    Some(h) if h == record.to_string() => {}
                    Some(_) => {
                        return Err(StorageError::Corrupt(
                            "a registration number is reserved for another record",
                        ));
                    }
                    None => {
                        if held_by.exists([record.to_string()])? {
                            return Err(StorageError::Corrupt(
                                "a record already holds another registration number",
                            ));
                        }
                        insert.execute(params![n.office, n.year, seq, record.to_string(), now_ms])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The registration number reserved for `record_id`, if any.
    pub fn number_for(&self, record_id: Uuid) -> Result<Option<RegistrationNumber>, StorageError> {
        let conn = self.conn();
        let mut st =
            conn.prepare_cached("SELECT office, year, seq FROM registration_numbers WHERE record_id = ?1")?;
        let row: Option<(String, i32, i64)> = st
            .query_row([record_id.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        row.map(|(office, year, seq)| {
            Ok(RegistrationNumber {
                office,
                year,
                seq: u64::try_from(seq)
                    .map_err(|_| StorageError::Corrupt("a registration sequence in the ledger"))?,
            })
        })
        .transpose()
    }

    /// Imports registration numbers the ledger lacks (a ledger made before
    /// it kept them, or one whose last reservation a crash lost while the
    /// database's commit survived), each (number, record, when registered),
    /// in one transaction; returns how many it wrote. A number the ledger
    /// holds for another record, or a record it holds another number for,
    /// is left as the ledger has it: the ledger stands.
    pub fn import_numbers(&self, numbers: &[(RegistrationNumber, Uuid, i64)]) -> Result<usize, StorageError> {
        if numbers.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut written = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO registration_numbers (office, year, seq, record_id, reserved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?;
            for (n, record, at) in numbers {
                let seq =
                    i64::try_from(n.seq).map_err(|_| StorageError::Corrupt("a registration sequence"))?;
                written += insert.execute(params![n.office, n.year, seq, record.to_string(), at])?;
            }
        }
        if written == 0 {
            return Ok(0);
        }
        tx.commit()?;
        drop(conn);
        self.sync()?;
        Ok(written)
    }

    /// How many registration numbers are reserved.
    pub fn number_count(&self) -> Result<u64, StorageError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM registration_numbers", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// The highest sequence reserved for `office` in `year` (0 when none).
    pub fn highest_seq(&self, office: &str, year: i32) -> Result<u64, StorageError> {
        let conn = self.conn();
        let mut st =
            conn.prepare_cached("SELECT MAX(seq) FROM registration_numbers WHERE office = ?1 AND year = ?2")?;
        let max: Option<i64> = st.query_row(params![office, year], |r| r.get(0))?;
        u64::try_from(max.unwrap_or(0))
            .map_err(|_| StorageError::Corrupt("a registration sequence in the ledger"))
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

    /// Records removals from staff rosters, durably (before the database
    /// commits them): a restore never puts the person back. Removals the
    /// ledger holds already are skipped; returns how many it wrote, and
    /// writes (and syncs) nothing when that is none.
    pub fn record_staff_removals(&self, removals: &[StaffRemoval]) -> Result<usize, StorageError> {
        let held: std::collections::HashSet<(String, String, i64)> = self
            .staff_removals()?
            .into_iter()
            .map(|r| (r.office, r.staff_key, r.removed_at_ms))
            .collect();
        let missing: Vec<&StaffRemoval> = removals
            .iter()
            .filter(|r| !held.contains(&(r.office.clone(), r.staff_key.clone(), r.removed_at_ms)))
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut written = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO staff_removals (office, staff_key, removed_at, by_operator) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?;
            for r in missing {
                written += insert.execute(params![r.office, r.staff_key, r.removed_at_ms, r.by])?;
            }
        }
        tx.commit()?;
        drop(conn);
        self.sync()?;
        Ok(written)
    }

    /// Every removal from a staff roster the ledger holds, oldest first.
    pub fn staff_removals(&self) -> Result<Vec<StaffRemoval>, StorageError> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT office, staff_key, removed_at, by_operator FROM staff_removals
             ORDER BY removed_at, office, staff_key",
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

    /// Records revocations of API keys (id, when), durably (before the
    /// database commits them): a restore never makes the key work again.
    /// A key the ledger knows revoked keeps its first time; returns how
    /// many it wrote, and writes (and syncs) nothing when that is none.
    pub fn record_api_key_revocations(&self, revocations: &[(Uuid, i64)]) -> Result<usize, StorageError> {
        let held: std::collections::HashSet<Uuid> = self
            .api_key_revocations()?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let missing: Vec<&(Uuid, i64)> = revocations.iter().filter(|(id, _)| !held.contains(id)).collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut written = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO api_key_revocations (key_id, revoked_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?;
            for (id, at) in missing {
                written += insert.execute(params![id.to_string(), at])?;
            }
        }
        tx.commit()?;
        drop(conn);
        self.sync()?;
        Ok(written)
    }

    /// Every API key revocation the ledger holds: (key id, when).
    pub fn api_key_revocations(&self) -> Result<Vec<(Uuid, i64)>, StorageError> {
        let conn = self.conn();
        let mut st =
            conn.prepare_cached("SELECT key_id, revoked_at FROM api_key_revocations ORDER BY revoked_at")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at) = row?;
            let id =
                Uuid::parse_str(&id).map_err(|_| StorageError::Corrupt("an API key id in the ledger"))?;
            out.push((id, at));
        }
        Ok(out)
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

/// What [`reconcile`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Removals of the database's staff history the ledger lacked, now in it.
    pub staff_removals_imported: usize,
    /// API key revocations of the database the ledger lacked, now in it.
    pub api_key_revocations_imported: usize,
    /// Staff members the database had on a roster although the ledger
    /// says they were removed (and not added again since): removed again.
    pub staff_removed_again: usize,
    /// API keys the database had active although the ledger says they
    /// were revoked: revoked again.
    pub api_keys_revoked_again: usize,
    /// Registration numbers of the registry's event log the ledger lacked,
    /// now in it.
    pub registration_numbers_imported: usize,
}

/// The registration numbers of the registry's event log that the ledger
/// lacks, imported; read only when the ledger holds fewer numbers than the
/// log (a ledger made before it kept numbers, or a crash that lost its
/// last reservation but not the database's commit). A database restored
/// from a backup holds fewer than the ledger: nothing is read.
fn import_registration_numbers(ledger: &KidcLedger, storage: &dyn Storage) -> Result<usize, StorageError> {
    if ledger.number_count()? >= storage.registration_number_count()? {
        return Ok(0);
    }
    let mut unreadable = 0;
    let numbers: Vec<(RegistrationNumber, Uuid, i64)> = storage
        .registration_numbers()?
        .into_iter()
        .filter_map(|(n, id, at)| match RegistrationNumber::parse(&n) {
            Some(n) => Some((n, id, at)),
            None => {
                unreadable += 1;
                None
            }
        })
        .collect();
    let imported = ledger.import_numbers(&numbers)?;
    if imported > 0 {
        tracing::info!(
            imported,
            "registration numbers the KIdC ledger lacked are now in it"
        );
    }
    let lacking = storage
        .registration_number_count()?
        .saturating_sub(ledger.number_count()?);
    if lacking > 0 {
        tracing::warn!(
            lacking,
            unreadable,
            "registration numbers of the registry are not in the KIdC ledger: the ledger holds their number for another record, or another number for their record"
        );
    }
    Ok(imported)
}

/// Brings the ledger and the database into agreement on staff removals and
/// API key revocations, writing only what one of them lacks (nothing at
/// all on the start of a server whose database was never restored).
///
/// * The ledger takes every `removed` entry of the staff history and every
///   revoked key it lacks (a ledger made before it kept them).
/// * A person the ledger says was removed at `T`, whom the database has on
///   the roster with `added_at < T`, is removed again: a `removed` entry in
///   the history, dated `T` (or the row's last change, if later: a
///   person's history never runs backwards), by the operator who removed
///   them, as the ledger recorded. Someone added again at or after `T`
///   stays: that addition came after the removal.
/// * A key the ledger says was revoked, and the database holds active, is
///   revoked again, at the ledger's time.
pub fn reconcile(ledger: &KidcLedger, storage: &dyn Storage) -> Result<Reconciled, StorageError> {
    let mut done = Reconciled {
        staff_removals_imported: ledger.record_staff_removals(&storage.staff_removals()?)?,
        registration_numbers_imported: import_registration_numbers(ledger, storage)?,
        ..Reconciled::default()
    };
    let keys = storage.api_keys()?;
    let revoked: Vec<(Uuid, i64)> = keys
        .iter()
        .filter_map(|k| k.revoked_at_ms.map(|at| (k.id, at)))
        .collect();
    done.api_key_revocations_imported = ledger.record_api_key_revocations(&revoked)?;

    // The database's side: the last removal of each person, by office.
    let mut last: std::collections::BTreeMap<(String, String), StaffRemoval> = Default::default();
    for r in ledger.staff_removals()? {
        let k = (r.office.clone(), r.staff_key.clone());
        if last.get(&k).is_none_or(|l| l.removed_at_ms <= r.removed_at_ms) {
            last.insert(k, r);
        }
    }
    let mut offices: std::collections::BTreeMap<&str, Vec<&StaffRemoval>> = Default::default();
    for ((office, _), r) in &last {
        offices.entry(office.as_str()).or_default().push(r);
    }
    let mut remove_again = Vec::new();
    for (office, removals) in offices {
        let roster = storage.roster(office)?;
        for r in removals {
            if roster
                .iter()
                .any(|m| m.staff_key == r.staff_key && m.is_active() && m.added_at_ms < r.removed_at_ms)
            {
                remove_again.push(r);
            }
        }
    }
    let active: std::collections::HashSet<Uuid> = keys
        .iter()
        .filter(|k| k.revoked_at_ms.is_none())
        .map(|k| k.id)
        .collect();
    let revoke_again: Vec<(Uuid, i64)> = ledger
        .api_key_revocations()?
        .into_iter()
        .filter(|(id, _)| active.contains(id))
        .collect();
    if remove_again.is_empty() && revoke_again.is_empty() {
        return Ok(done);
    }
    let mut tx = storage.begin()?;
    for r in remove_again {
        // Checked again under the writer.
        let again = tx
            .staff(&r.office, &r.staff_key)?
            .is_some_and(|m| m.is_active() && m.added_at_ms < r.removed_at_ms);
        if again
            && tx
                .remove_staff(&r.office, &r.staff_key, &r.by, r.removed_at_ms)?
                .is_some()
        {
            done.staff_removed_again += 1;
        }
    }
    for (id, at) in revoke_again {
        if tx.revoke_api_key(id, at)? {
            done.api_keys_revoked_again += 1;
        }
    }
    tx.commit()?;
    tracing::warn!(
        staff = done.staff_removed_again,
        api_keys = done.api_keys_revoked_again,
        "the database lacked removals and revocations the ledger keeps (restored from an older backup?): applied again"
    );
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> Kidc {
        Kidc::parse(s).expect("valid")
    }

    fn codes(entries: &[(Kidc, Uuid)]) -> Reservations {
        Reservations {
            codes: entries.to_vec(),
            numbers: Vec::new(),
        }
    }

    fn numbers(entries: &[(RegistrationNumber, Uuid)]) -> Reservations {
        Reservations {
            codes: Vec::new(),
            numbers: entries.to_vec(),
        }
    }

    fn number(office: &str, year: i32, seq: u64) -> RegistrationNumber {
        RegistrationNumber {
            office: office.into(),
            year,
            seq,
        }
    }

    #[test]
    fn registration_numbers_read_and_import_only_what_the_ledger_lacks() {
        assert_eq!(
            RegistrationNumber::parse("171003/2026/000042"),
            Some(number("171003", 2026, 42))
        );
        for bad in [
            "",
            "171003/2026",
            "171003/2026/0",
            "171003/x/1",
            "/2026/1",
            "1/2/3/4",
        ] {
            assert_eq!(RegistrationNumber::parse(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let (r1, r2, r3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (ledger, _) = KidcLedger::open(&path, &[], 1).unwrap();
        ledger
            .reserve(&numbers(&[(number("171003", 2026, 1), r1)]), 2)
            .unwrap();
        let imported = ledger
            .import_numbers(&[
                (number("171003", 2026, 1), r1, 5),
                (number("171003", 2026, 2), r2, 6),
                (number("171003", 2026, 2), r3, 7),
                (number("171003", 2026, 3), r1, 8),
            ])
            .unwrap();
        assert_eq!(
            imported, 1,
            "held already, or in conflict with what the ledger holds"
        );
        assert_eq!(ledger.number_count().unwrap(), 2);
        assert_eq!(ledger.number_for(r1).unwrap(), Some(number("171003", 2026, 1)));
        assert_eq!(ledger.number_for(r2).unwrap(), Some(number("171003", 2026, 2)));
        assert_eq!(ledger.number_for(r3).unwrap(), None);
        assert_eq!(
            ledger
                .import_numbers(&[(number("171003", 2026, 2), r2, 6)])
                .unwrap(),
            0
        );
    }

    #[test]
    fn registration_numbers_are_kept_once_per_record_and_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let (r1, r2, r3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (ledger, _) = KidcLedger::open(&path, &[], 1).unwrap();
        assert_eq!(ledger.highest_seq("171003", 2026).unwrap(), 0);
        ledger
            .reserve(
                &numbers(&[(number("171003", 2026, 1), r1), (number("171003", 2026, 7), r2)]),
                2,
            )
            .unwrap();
        ledger
            .reserve(&numbers(&[(number("171003", 2026, 7), r2)]), 3)
            .expect("the same reservation again is fine");
        assert!(
            ledger
                .reserve(&numbers(&[(number("171003", 2026, 7), r3)]), 4)
                .is_err(),
            "one number, two records"
        );
        assert!(
            ledger
                .reserve(&numbers(&[(number("171003", 2026, 8), r1)]), 4)
                .is_err(),
            "one record, two numbers"
        );
        // A KIdC and a number in one call: the failing number takes the
        // code with it.
        assert!(
            ledger
                .reserve(
                    &Reservations {
                        codes: vec![(code("1000000001"), r3)],
                        numbers: vec![(number("171003", 2026, 1), r3)],
                    },
                    5
                )
                .is_err()
        );
        assert_eq!(
            ledger.code_for(r3).unwrap(),
            None,
            "nothing of a failed call is kept"
        );
        drop(ledger);

        let (ledger, _) = KidcLedger::open(&path, &[], 6).unwrap();
        assert_eq!(ledger.number_for(r2).unwrap(), Some(number("171003", 2026, 7)));
        assert_eq!(ledger.number_for(r3).unwrap(), None);
        assert_eq!(ledger.highest_seq("171003", 2026).unwrap(), 7);
        assert_eq!(ledger.highest_seq("171003", 2027).unwrap(), 0, "counted per year");
        assert_eq!(
            ledger.highest_seq("171004", 2026).unwrap(),
            0,
            "counted per office"
        );
        assert_eq!(number("171003", 2026, 7).to_string(), "171003/2026/000007");
        drop(ledger);
        let conn = Connection::open(&path).unwrap();
        for sql in [
            "DELETE FROM registration_numbers",
            "UPDATE registration_numbers SET seq = 1",
            "UPDATE registration_numbers SET record_id = 'x'",
        ] {
            assert!(conn.execute(sql, []).is_err(), "append-only: {sql}");
        }
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
        ledger.reserve(&codes(&[(code("1000000028"), r2)]), 2).unwrap();
        ledger
            .reserve(&codes(&[(code("1000000028"), r2)]), 3)
            .expect("the same reservation again is fine");
        assert!(ledger.reserve(&codes(&[(code("1000000028"), r1)]), 4).is_err());
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
    fn staff_removals_and_api_key_revocations_are_kept_once_and_append_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let (ledger, _) = KidcLedger::open(&path, &[], 1).unwrap();
        let removal = |at| StaffRemoval {
            office: "171003".into(),
            staff_key: "clerk-01".into(),
            removed_at_ms: at,
            by: "ops".into(),
        };
        assert_eq!(ledger.record_staff_removals(&[removal(5)]).unwrap(), 1);
        assert_eq!(
            ledger.record_staff_removals(&[removal(5)]).unwrap(),
            0,
            "held already"
        );
        assert_eq!(
            ledger.record_staff_removals(&[removal(5), removal(9)]).unwrap(),
            1,
            "removed again after a return"
        );
        let key = Uuid::from_u128(3);
        assert_eq!(ledger.record_api_key_revocations(&[(key, 7)]).unwrap(), 1);
        assert_eq!(
            ledger.record_api_key_revocations(&[(key, 8)]).unwrap(),
            0,
            "the first time is kept"
        );
        drop(ledger);
        let (ledger, _) = KidcLedger::open(&path, &[], 2).unwrap();
        assert_eq!(ledger.staff_removals().unwrap(), [removal(5), removal(9)]);
        assert_eq!(ledger.api_key_revocations().unwrap(), [(key, 7)]);
        drop(ledger);
        let conn = Connection::open(&path).unwrap();
        for sql in [
            "DELETE FROM staff_removals",
            "UPDATE staff_removals SET removed_at = 1",
            "DELETE FROM api_key_revocations",
            "UPDATE api_key_revocations SET revoked_at = 1",
        ] {
            assert!(conn.execute(sql, []).is_err(), "append-only: {sql}");
        }
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
        assert_eq!(crvs_sqlite::user_version(&ledger.conn()).unwrap(), 3);
    }
}
