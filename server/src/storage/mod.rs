//! Server storage, behind the [`Storage`] trait.
//!
//! The ingest logic ([`crate::ingest`]) is written once against
//! [`WriteTx`], a write transaction exposing primitive operations (get a
//! device, load and save a record document, append to the change-set log,
//! insert an issuance, append a server change, advance a device's cursor).
//! Each backend implements them: [`sqlite::SqliteStorage`] (the embedded
//! default) and [`postgres::PostgresStorage`] (the national service).
//!
//! The trait is synchronous: the HTTP layer calls it from
//! `tokio::task::spawn_blocking`. Two requests for the same device or
//! record never interleave: SQLite hands out one write transaction at a
//! time ([`Storage::begin`] blocks until the writer is free); PostgreSQL
//! runs several at once and takes the locks that keep them apart (see
//! [`postgres`]: the chain lock, the office lock, the registry lock).
//!
//! The staff roster ([`WriteTx::put_staff`], [`WriteTx::remove_staff`],
//! [`Storage::roster`], [`Storage::staff_role_at`]) keeps each office's
//! current staff and an append-only history of every change; what a put
//! writes is decided once, by [`plan_staff_put`], for every backend.
//!
//! **Architecture invariant:** the change-set log, the KIdC issuance log
//! and the staff history are append-only; every backend enforces it in
//! the database itself (triggers), not only in this code.

pub mod postgres;
pub mod sqlite;

use crvs_schema::Kidc;
use crvs_schema::wire::{Hash, TabletReport};
use uuid::Uuid;

use crate::staff::Roles;

/// A storage failure. Messages name tables and operations, never values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// A stored value does not have the expected shape.
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    /// The database was written by a newer build.
    #[error("the database schema version {found} is newer than this build supports ({supported})")]
    TooNew {
        /// Version found in the database.
        found: i64,
        /// Latest version this build knows.
        supported: i64,
    },
    /// A file could not be read or written.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The database could not run this transaction alongside another one
    /// (a deadlock or a serialization failure): nothing of it was kept,
    /// and running it again is expected to work. Only backends with
    /// concurrent writers ([`Storage::concurrent_writers`]) report it.
    #[error("the transaction conflicted with another and was rolled back: {0}")]
    Conflict(String),
    /// A `crvs-server restore` into this database stopped before it
    /// finished (PostgreSQL): the database is not opened until a restore
    /// finishes.
    #[error(
        "a restore of this database stopped before it finished (the data it replaced is kept in a schema named crvs_replaced_<time>): run `crvs-server restore --from BACKUP` again with the same backup; no server opens the database until a restore has finished"
    )]
    RestoreInterrupted,
}

impl From<crvs_sqlite::OpenError> for StorageError {
    fn from(e: crvs_sqlite::OpenError) -> Self {
        use crvs_sqlite::OpenError;
        match e {
            OpenError::TooNew { found, supported } => StorageError::TooNew {
                found: found.into(),
                supported: supported.into(),
            },
            OpenError::Io(e) => StorageError::Io(e),
            other => StorageError::Database(other.to_string()),
        }
    }
}

/// An enrolled device, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device id the server assigned.
    pub device_id: Uuid,
    /// The office whose records it may write (today a commune code).
    pub office: String,
    /// Its ed25519 public key.
    pub public_key: [u8; 32],
    /// When it enrolled, server ms.
    pub enrolled_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
    /// The sequence number of its last applied change set (0: none yet).
    pub last_seq: u64,
    /// The hash of its last applied change set (zeros: none yet).
    pub last_hash: Hash,
    /// Server time of its last authenticated sync request.
    pub last_sync_at_ms: Option<i64>,
    /// Its clock at that request.
    pub last_device_clock_ms: Option<i64>,
    /// Device clock minus server clock at that request.
    pub clock_skew_ms: Option<i64>,
    /// The last time its clock was off by more than a day.
    pub clock_flagged_at_ms: Option<i64>,
    /// The change set refused to it for good, if its outbox is stuck
    /// behind one (cleared when its chain advances).
    pub refused: Option<DeviceRefusal>,
    /// The counter of the last sync request accepted from it (0: none).
    pub last_request_counter: u64,
    /// The lineage of the store it syncs from (sync format 3), once known.
    pub lineage: Option<[u8; 16]>,
    /// Requests refused because they came from another copy of its store.
    pub clone_refusals: u64,
    /// When the last of them was refused.
    pub clone_refused_at_ms: Option<i64>,
    /// How many times it adopted the server's chain position (it lost its
    /// own: a lost commit, an old copy of its store).
    pub adoptions: u64,
    /// An operator unblocked it: its change set with this sequence number
    /// is set aside when it comes.
    pub unblock_seq: Option<u64>,
    /// What it reported with its last sync request (sync version 6; `None`
    /// for an older tablet).
    pub report: Option<TabletReport>,
    /// The feed position of its last answer: it has been sent the feed up
    /// to here (`None`: never answered since migration 010).
    pub feed_sent_cursor: Option<u64>,
}

/// A change set refused for a reason a resend cannot fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRefusal {
    /// Its sequence number.
    pub seq: u64,
    /// The refusal code (`RefusalCode::as_str`).
    pub code: String,
    /// When, server ms.
    pub at_ms: i64,
}

/// A device to insert at enrolment.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// The new device id.
    pub device_id: Uuid,
    /// Its office.
    pub office: String,
    /// Its ed25519 public key.
    pub public_key: [u8; 32],
    /// Now, server ms.
    pub enrolled_at_ms: i64,
}

/// What the sync endpoint records about each authenticated request.
#[derive(Debug, Clone)]
pub struct SyncSeen {
    /// Server time.
    pub at_ms: i64,
    /// The device's clock, as it claims.
    pub device_clock_ms: i64,
    /// Device clock minus server clock.
    pub skew_ms: i64,
    /// The skew is beyond the tolerated day.
    pub flagged: bool,
    /// The request's counter: recorded only if it is above the last one.
    pub counter: u64,
    /// What the tablet reported (sync version 6), stored as the device's
    /// latest; `None` clears it (an older tablet reports nothing).
    pub report: Option<TabletReport>,
}

/// A record document, as stored.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    /// The record's id.
    pub record_id: Uuid,
    /// Its office.
    pub office: String,
    /// The device that created it (the only one that may write it).
    pub origin_device: Uuid,
    /// Its kind (`birth`, ...).
    pub kind: String,
    /// Its derived workflow state (plaintext bookkeeping for operators).
    pub status: String,
    /// The automerge document: a saved document, a run of change chunks,
    /// or a saved document followed by change chunks.
    pub doc: Vec<u8>,
    /// Server time of the last write.
    pub updated_at_ms: i64,
}

/// One entry of the append-only change-set log.
#[derive(Debug, Clone, Copy)]
pub struct LogEntry<'a> {
    /// The signing device.
    pub device_id: Uuid,
    /// Its sequence number.
    pub seq: u64,
    /// SHA-256 of the signed bytes.
    pub hash: &'a Hash,
    /// The signed bytes, verbatim.
    pub signed: &'a [u8],
    /// Server time of receipt.
    pub received_at_ms: i64,
}

/// One entry of the append-only KIdC issuance log.
#[derive(Debug, Clone, Copy)]
pub struct Issuance<'a> {
    /// The code.
    pub kidc: &'a Kidc,
    /// The record that receives it.
    pub record_id: Uuid,
    /// Its category digit.
    pub category: u8,
    /// Server time.
    pub issued_at_ms: i64,
    /// The device whose change set led to it.
    pub device_id: Uuid,
    /// That change set's sequence number.
    pub seq: u64,
    /// Why it was issued (a stable code such as `birth_approved`).
    pub reason: &'a str,
}

/// Who a row of the pull feed is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedTo<'a> {
    /// Every device of the office: a change the server made.
    Office(&'a str),
    /// Every device of the office but `from`, whose tablet made the change.
    OfficeExcept {
        /// The office.
        office: &'a str,
        /// The device that made it.
        from: Uuid,
    },
}

/// A server-made automerge change in a device's pull feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerChange {
    /// Its position in the feed.
    pub cursor: u64,
    /// The record it changes.
    pub record_id: Uuid,
    /// The raw automerge change.
    pub change: Vec<u8>,
}

/// An enrolment token, as stored (by the hash of the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// The office the enrolled device will serve.
    pub office: String,
    /// When the token was made.
    pub created_at_ms: i64,
    /// When it stops being valid.
    pub expires_at_ms: i64,
    /// When it was used, if it was.
    pub used_at_ms: Option<i64>,
    /// The key of the enrolment MAC (a hash of the token's secret); `None`
    /// for a token made before version 2, which cannot be used.
    pub mac_key: Option<[u8; 32]>,
    /// The device it enrolled and that device's public key, once used.
    pub used_by: Option<(Uuid, [u8; 32])>,
}

/// A record held for review, not yet released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRow {
    /// The record.
    pub record_id: Uuid,
    /// Its office.
    pub office: String,
    /// The hold's reason code.
    pub reason: String,
    /// When it was held, server ms.
    pub since: i64,
}

/// One audited release attempt.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseAudit<'a> {
    /// The record.
    pub record_id: Uuid,
    /// The hold's reason code.
    pub hold_reason: &'a str,
    /// The operator.
    pub by: &'a str,
    /// Why, in the operator's words.
    pub why: &'a str,
    /// When, server ms.
    pub at_ms: i64,
    /// `released`, or `still_held`.
    pub outcome: &'a str,
}

/// An operator's unblock of a device.
#[derive(Debug, Clone, Copy)]
pub struct UnblockAudit<'a> {
    /// The device.
    pub device_id: Uuid,
    /// The refused change set's sequence number.
    pub seq: u64,
    /// Its refusal code.
    pub code: &'a str,
    /// The operator.
    pub by: &'a str,
    /// Why.
    pub why: &'a str,
    /// When, server ms.
    pub at_ms: i64,
}

/// A staff member of an office's roster, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffMember {
    /// The office (today a commune code).
    pub office: String,
    /// The staff id as the operator first entered it.
    pub staff_id: String,
    /// Its comparison form ([`staff_key`]): the roster's key.
    pub staff_key: String,
    /// The roles held (none once removed).
    pub roles: Roles,
    /// The PIN's Argon2id PHC string; `None` once removed.
    pub pin_hash: Option<String>,
    /// When the person was (last) put on the roster, server ms.
    pub added_at_ms: i64,
    /// The last change, server ms.
    pub updated_at_ms: i64,
    /// When the person was removed, if they are off the roster.
    pub removed_at_ms: Option<i64>,
}

impl StaffMember {
    /// On the roster now (not removed).
    pub fn is_active(&self) -> bool {
        self.removed_at_ms.is_none()
    }
}

/// The form in which a roster compares staff ids: the workflow's
/// [`crvs_schema::workflow::staff_id_key`], so the roster and the
/// workflow's "verifier is not the clerk" rule agree on who is who.
pub fn staff_key(staff_id: &str) -> String {
    crvs_schema::workflow::staff_id_key(staff_id)
}

/// One kind of entry of the append-only staff history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StaffEvent {
    /// Put on the roster (first time, or again after a removal).
    Added,
    /// The roles changed.
    RolesChanged,
    /// A PIN was set (its hash is on the roster, not in the history).
    PinSet,
    /// Taken off the roster.
    Removed,
}

impl StaffEvent {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StaffEvent::Added => "added",
            StaffEvent::RolesChanged => "roles_changed",
            StaffEvent::PinSet => "pin_set",
            StaffEvent::Removed => "removed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<StaffEvent> {
        Some(match s {
            "added" => StaffEvent::Added,
            "roles_changed" => StaffEvent::RolesChanged,
            "pin_set" => StaffEvent::PinSet,
            "removed" => StaffEvent::Removed,
            _ => return None,
        })
    }
}

/// One entry of an office's staff history, as ingest reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffHistoryEntry {
    /// The person's [`staff_key`].
    pub staff_key: String,
    /// What happened.
    pub event: StaffEvent,
    /// The roles held after it (none for a removal).
    pub roles: Roles,
    /// When, server ms.
    pub at_ms: i64,
}

/// An add or update of a staff member ([`WriteTx::put_staff`]).
#[derive(Debug, Clone, Copy)]
pub struct StaffPut<'a> {
    /// The office.
    pub office: &'a str,
    /// The staff id as entered (checked by the caller).
    pub staff_id: &'a str,
    /// The roles the person holds from now on (at least one).
    pub roles: Roles,
    /// A new PIN's PHC string, if one is set. Required to put a person
    /// on the roster (first time or after a removal).
    pub pin_hash: Option<&'a str>,
    /// The operator, for the history.
    pub by: &'a str,
    /// Now, server ms.
    pub at_ms: i64,
}

/// What [`WriteTx::put_staff`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaffPutOutcome {
    /// Written: the roster row as it now stands and the history entries
    /// appended (none when nothing changed).
    Done {
        /// The roster row.
        member: StaffMember,
        /// The history entries appended, in order.
        events: Vec<StaffEvent>,
    },
    /// Nothing written: the person is not on the roster, and putting them
    /// on it needs a PIN.
    PinNeeded,
}

/// The roster row and history entries of a put, given the row it finds
/// (shared by every backend, so they all write the same history).
///
/// Times never run backwards for one person: an event is dated no earlier
/// than the person's last one, so the history stays in order even when
/// the server's clock was set back.
pub fn plan_staff_put(
    existing: Option<&StaffMember>,
    put: &StaffPut<'_>,
) -> Option<(StaffMember, Vec<StaffEvent>)> {
    let key = staff_key(put.staff_id);
    match existing.filter(|m| m.is_active()) {
        None => {
            let pin_hash = put.pin_hash?;
            let at = existing.map_or(put.at_ms, |m| put.at_ms.max(m.updated_at_ms));
            Some((
                StaffMember {
                    office: put.office.to_string(),
                    // A person put back after a removal takes the id as
                    // entered now.
                    staff_id: put.staff_id.to_string(),
                    staff_key: key,
                    roles: put.roles,
                    pin_hash: Some(pin_hash.to_string()),
                    added_at_ms: at,
                    updated_at_ms: at,
                    removed_at_ms: None,
                },
                vec![StaffEvent::Added, StaffEvent::PinSet],
            ))
        }
        Some(m) => {
            let at = put.at_ms.max(m.updated_at_ms);
            let mut events = Vec::new();
            let mut member = m.clone();
            if m.roles != put.roles {
                events.push(StaffEvent::RolesChanged);
                member.roles = put.roles;
            }
            if let Some(h) = put.pin_hash {
                events.push(StaffEvent::PinSet);
                member.pin_hash = Some(h.to_string());
            }
            if !events.is_empty() {
                member.updated_at_ms = at;
            }
            Some((member, events))
        }
    }
}

/// A removal from a roster, as the staff history and the ledger
/// ([`crate::ledger`]) keep it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StaffRemoval {
    /// The office.
    pub office: String,
    /// The person's [`staff_key`].
    pub staff_key: String,
    /// When they were removed, server ms.
    pub removed_at_ms: i64,
    /// The operator who removed them.
    pub by: String,
}

/// An institution's API key, as stored (by the hash of the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// The key's id (a UUID), which names it in the CLI and the log.
    pub id: Uuid,
    /// The operator's name for it (the system that holds it).
    pub name: String,
    /// What it may do (`notify`, ...).
    pub scope: String,
    /// SHA-256 of the key, hex.
    pub key_hash: String,
    /// When it was made, server ms.
    pub created_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// A notification of a birth or death, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNotification {
    /// Its id (UUIDv7, minted by the server at receipt).
    pub notification_id: Uuid,
    /// `birth` or `death`.
    pub kind: String,
    /// The sending system, as it names itself.
    pub source_system: String,
    /// The sender's reference, unique per system.
    pub source_reference: String,
    /// The commune of residence (6 digits), where it is routed.
    pub commune: String,
    /// The validated notification, as JSON. Holds names.
    pub payload: String,
    /// The API key that sent it.
    pub api_key_id: Uuid,
    /// When it was received, server ms.
    pub received_at_ms: i64,
    /// The record registered for it, once there is one.
    pub registered_record_id: Option<Uuid>,
    /// When that record was registered.
    pub registered_at_ms: Option<i64>,
}

/// One entry of the registry's append-only event log
/// ([`crate::registry`]): an event as the registry applied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEventRow {
    /// Its position in the log (1, 2, ...); assigned by
    /// [`WriteTx::registry_append_event`].
    pub seq: u64,
    /// The registered record.
    pub record_id: Uuid,
    /// `birth`, `death`, ...
    pub kind: String,
    /// Its registration number.
    pub registration_number: String,
    /// When it was registered, server ms.
    pub registered_at_ms: i64,
    /// The registering office (commune code).
    pub office: String,
    /// The event's JSON, as applied. Holds names.
    pub event: String,
    /// A birth's new KIdC.
    pub kidc: Option<Kidc>,
    /// An amendment: the amended birth record.
    pub amends_record_id: Option<Uuid>,
    /// An amendment: the amended birth's KIdC.
    pub amends_kidc: Option<Kidc>,
    /// Registered past the legal period.
    pub late: bool,
}

/// A person of the registry, as stored (`registry_persons`). Coded values
/// (sex, marital status, place kind) are their JSON strings; dates are
/// `YYYY-MM-DD`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryPerson {
    /// The internal id (derived from the record that first named them).
    pub person_id: Uuid,
    /// Their KIdC, if they have one.
    pub kidc: Option<Kidc>,
    /// Family name, Khmer script.
    pub family_name: Option<String>,
    /// Given name, Khmer script.
    pub given_name: Option<String>,
    /// Family name, Latin script.
    pub family_name_latin: Option<String>,
    /// Given name, Latin script.
    pub given_name_latin: Option<String>,
    /// `male` or `female`.
    pub sex: Option<String>,
    /// Date of birth.
    pub date_of_birth: Option<String>,
    /// Place of birth: its kind.
    pub place_of_birth_kind: Option<String>,
    /// Place of birth: the facility's name.
    pub place_of_birth_facility: Option<String>,
    /// Place of birth: the village code.
    pub place_of_birth_village: Option<String>,
    /// Nationality as declared (ISO 3166-1 alpha-3).
    pub nationality: Option<String>,
    /// Citizenship (ISO 3166-1 alpha-3).
    pub citizenship: Option<String>,
    /// Current marital status.
    pub marital_status: Option<String>,
    /// Declared address: the residence village code.
    pub residence_village_code: Option<String>,
    /// Date of death, if deceased.
    pub date_of_death: Option<String>,
    /// The death's record, if deceased.
    pub death_record_id: Option<Uuid>,
    /// The registry event that first named them.
    pub first_seq: u64,
    /// The last registry event that changed them.
    pub last_seq: u64,
}

/// A marriage of the registry, as stored (`registry_marriages`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMarriage {
    /// The marriage's record id.
    pub marriage_id: Uuid,
    /// The first spouse's person id.
    pub spouse_a: Uuid,
    /// The second spouse's person id.
    pub spouse_b: Uuid,
    /// `YYYY-MM-DD`.
    pub date_of_marriage: String,
    /// Where (village code).
    pub place_village: String,
    /// When it ended, if it did.
    pub ended_on: Option<String>,
    /// `divorce` or `death`.
    pub ended_by: Option<String>,
    /// The record that ended it.
    pub end_record_id: Option<Uuid>,
}

/// A parent or child link of a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRelative {
    /// The relative.
    pub person: RegistryPerson,
    /// `mother`, `father` (by birth) or `adoptive`.
    pub relation: String,
}

/// One entry of a person's marital history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMaritalEntry {
    /// The registry event that changed it.
    pub seq: u64,
    /// The status from then on.
    pub status: String,
    /// Since when (the event's date), when known.
    pub since: Option<String>,
}

/// One event that named or changed a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPersonEvent {
    /// The registry event.
    pub seq: u64,
    /// The registered record.
    pub record_id: Uuid,
    /// `birth`, `death`, ...
    pub kind: String,
    /// Its registration number.
    pub registration_number: String,
    /// When it was registered, server ms.
    pub registered_at_ms: i64,
    /// The person's role in it (`child`, `mother`, `spouse`, ...).
    pub role: String,
}

/// Everything the registry holds about one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The person.
    pub person: RegistryPerson,
    /// Their identity documents (kind, number).
    pub documents: Vec<(String, String)>,
    /// Their parents, by birth and adoptive.
    pub parents: Vec<RegistryRelative>,
    /// Their children (the relation is the person's to the child).
    pub children: Vec<RegistryRelative>,
    /// Their marriages, current and ended, oldest first.
    pub marriages: Vec<RegistryMarriage>,
    /// The other spouse of each marriage, in the same order.
    pub spouses: Vec<RegistryPerson>,
    /// Their marital history, oldest first.
    pub marital_history: Vec<RegistryMaritalEntry>,
    /// The events that named or changed them, oldest first.
    pub events: Vec<RegistryPersonEvent>,
}

/// The registry in canonical form: per person id, the SHA-256 of the
/// canonical text of every row of the registry that concerns them; per
/// entry of the event log, the SHA-256 of its row. Two registries are
/// identical when their dumps are. (Hashes, not the text: a dump of
/// millions of persons and events stays small.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryDump {
    /// Person id → SHA-256 of their canonical rows.
    pub persons: std::collections::BTreeMap<String, [u8; 32]>,
    /// Seq → SHA-256 of the event log's row.
    pub events: std::collections::BTreeMap<u64, [u8; 32]>,
}

/// A storage backend.
pub trait Storage: Send + Sync {
    /// Starts the write transaction, waiting until the single writer is
    /// free. Dropping the transaction without [`WriteTx::commit`] rolls it
    /// back.
    fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StorageError>;

    /// Whether several write transactions run at once (PostgreSQL: several
    /// server processes, and operator commands beside a server). If not,
    /// [`Storage::begin`] hands out one at a time. If so, a commit is
    /// durable when it returns, and a transaction may fail with
    /// [`StorageError::Conflict`], to be run again. Either way, a server
    /// groups concurrent sync requests into one transaction
    /// ([`crate::group_commit`]).
    fn concurrent_writers(&self) -> bool {
        false
    }

    /// Every enrolled device (read-only; does not wait for the writer).
    fn list_devices(&self) -> Result<Vec<Device>, StorageError>;

    /// One device (read-only; does not wait for the writer).
    fn device(&self, device_id: Uuid) -> Result<Option<Device>, StorageError>;

    /// When the first entry of the device's feed after `cursor` was
    /// written (server ms); `None` when nothing waits for it (read-only;
    /// does not wait for the writer). The feed's lag.
    fn feed_waiting_since(&self, device_id: Uuid, cursor: u64) -> Result<Option<i64>, StorageError>;

    /// An enrolment token by its lookup hash (read-only; does not wait for
    /// the writer, so an unauthenticated enrolment never holds it up).
    fn token(&self, token_hash: &str) -> Result<Option<TokenRow>, StorageError>;

    /// Every code of the issuance log and its record (read-only).
    fn issuances(&self) -> Result<Vec<(Kidc, Uuid)>, StorageError>;

    /// How many codes the issuance log holds (read-only).
    fn issuance_count(&self) -> Result<u64, StorageError>;

    /// Every registration number the registry's event log holds, with its
    /// record and when it was registered (read-only).
    fn registration_numbers(&self) -> Result<Vec<(String, Uuid, i64)>, StorageError>;

    /// How many registration numbers the registry's event log holds
    /// (read-only).
    fn registration_number_count(&self) -> Result<u64, StorageError>;

    /// Every record held and not released, oldest first (read-only).
    fn holds(&self) -> Result<Vec<HoldRow>, StorageError>;

    /// The roster of an office, current and removed members, by staff id
    /// (read-only).
    fn roster(&self, office: &str) -> Result<Vec<StaffMember>, StorageError>;

    /// Whether the person (a staff id, or its [`staff_key`]) was on the
    /// office's roster at `at_ms` (server ms), and with which roles,
    /// answered from the history (read-only). An event counts from its own
    /// time on: at the instant of a removal the person is off the roster.
    fn staff_role_at(&self, office: &str, staff: &str, at_ms: i64) -> Result<Option<Roles>, StorageError>;
    /// The office's whole staff history, oldest first (read-only): what
    /// ingest checks each workflow step against
    /// ([`crate::staff::RosterHistory`]).
    fn staff_history(&self, office: &str) -> Result<Vec<StaffHistoryEntry>, StorageError>;
    /// An API key by the hash of the key (read-only; does not wait for
    /// the writer, so an unauthenticated request never holds it up).
    fn api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRow>, StorageError>;

    /// Every API key, revoked ones included, oldest first (read-only).
    fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StorageError>;

    /// Every `removed` entry of the staff history, of every office
    /// (read-only): what the ledger must also know
    /// ([`crate::ledger::reconcile`]).
    fn staff_removals(&self) -> Result<Vec<StaffRemoval>, StorageError>;

    /// The notifications pending for commune `commune` (6 digits): not
    /// yet registered, oldest first (read-only). What the commune's
    /// tablets are to receive.
    fn pending_notifications(&self, commune: &str) -> Result<Vec<StoredNotification>, StorageError>;
    /// The notifications registered since `since_ms`, by registration time.
    fn registered_notifications(&self, since_ms: i64) -> Result<Vec<StoredNotification>, StorageError>;

    /// Every notification not yet registered that was received before
    /// `received_before_ms` (all of them with `None`), oldest first
    /// (read-only).
    fn unregistered_notifications(
        &self,
        received_before_ms: Option<i64>,
    ) -> Result<Vec<StoredNotification>, StorageError>;

    /// Makes every transaction committed so far durable (see
    /// [`WriteTx::commit_unsynced`]). Called without the writer.
    fn sync_log(&self) -> Result<(), StorageError>;

    /// Everything the registry holds about the person with this KIdC
    /// (read-only).
    fn registry_entry(&self, kidc: &Kidc) -> Result<Option<RegistryEntry>, StorageError>;
    /// The registry in canonical form (read-only).
    fn registry_dump(&self) -> Result<RegistryDump, StorageError>;
    /// Vital statistics from the registry's event log: per office and
    /// kind of event, how many were registered and how many of those late,
    /// in the registration year `year` (all years when `None`).
    fn registration_stats(&self, year: Option<i32>) -> Result<Vec<RegistrationStat>, StorageError>;
    /// The registry's canonical form, and its whole event log handed to
    /// `each` in order, a batch at a time, read in one read transaction so
    /// that they agree while the server runs (read-only; does not wait for
    /// the writer).
    fn registry_snapshot(
        &self,
        each: &mut dyn FnMut(&[RegistryEventRow]) -> Result<(), StorageError>,
    ) -> Result<RegistryDump, StorageError>;
}

/// One line of [`Storage::registration_stats`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegistrationStat {
    /// The registering office (6-digit commune code).
    pub office: String,
    /// The kind of event.
    pub kind: String,
    /// Events registered.
    pub registered: u64,
    /// Of those, registered after the legal period.
    pub late: u64,
}

/// The savepoints of a write transaction (see [`WriteTx::savepoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Savepoint {
    /// Around one sync request in a commit group: a request that fails is
    /// undone alone, and the others of its group commit.
    Request,
    /// Around one change set of a request: a refused change set is undone
    /// alone, and those before it stand.
    ChangeSet,
}

impl Savepoint {
    /// Its SQL name.
    pub fn name(self) -> &'static str {
        match self {
            Savepoint::Request => "request",
            Savepoint::ChangeSet => "change_set",
        }
    }
}

/// The last cursor a pull feed handed out: `office` is `None` for the
/// one feed of a SQLite server (its cursor is global), the office on
/// PostgreSQL (each office's feed is counted apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedHead {
    /// The office whose feed it is; `None`: every office's.
    pub office: Option<String>,
    /// The last cursor handed out.
    pub last: u64,
}

/// The primitive operations of a write transaction.
///
/// Every read sees the transaction's own writes. Nothing is visible to
/// others, or durable, before [`WriteTx::commit`] returns.
pub trait WriteTx {
    /// Sets a savepoint: [`WriteTx::rollback_to_savepoint`] undoes every
    /// write after it. Savepoints nest: one [`Savepoint::Request`] per
    /// request of a commit group, one [`Savepoint::ChangeSet`] inside it
    /// per change set; each is released or rolled back before the next of
    /// its kind is set.
    fn savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError>;
    /// Forgets the savepoint (and any set after it), keeping their writes.
    fn release_savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError>;
    /// Undoes every write since the savepoint, and forgets it (and any set
    /// after it).
    fn rollback_to_savepoint(&mut self, sp: Savepoint) -> Result<(), StorageError>;
    /// Makes every write durable (on disk) and visible.
    fn commit(self: Box<Self>) -> Result<(), StorageError>;
    /// Makes every write visible, and durable only once
    /// [`Storage::sync_log`] returns: group commit releases the writer
    /// before it waits for the disk, and answers only after. A backend
    /// whose commit is durable anyway implements it as [`WriteTx::commit`].
    fn commit_unsynced(self: Box<Self>) -> Result<(), StorageError>;

    /// A value of `server_meta`.
    fn meta(&mut self, key: &str) -> Result<Option<String>, StorageError>;
    /// Sets a value of `server_meta`.
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StorageError>;
    /// Removes a value of `server_meta`.
    fn delete_meta(&mut self, key: &str) -> Result<(), StorageError>;

    /// The last cursor each pull feed handed out ([`FeedHead`]): one for
    /// the whole server on SQLite, one per office on PostgreSQL. Used by
    /// `restore` only.
    fn feed_heads(&mut self) -> Result<Vec<FeedHead>, StorageError>;
    /// Raises each named feed's last cursor to at least `last` (creating
    /// an office's counter if it has none), so that the next entry is
    /// numbered above it. Used by `restore` only.
    fn raise_feed_heads(&mut self, heads: &[FeedHead]) -> Result<(), StorageError>;
    /// Raises every device's request counter by `by`: requests captured
    /// before a restore are refused after it. The devices changed.
    fn jump_request_counters(&mut self, by: u64) -> Result<u64, StorageError>;
    /// Expires every enrolment token not used yet (and not expired) at
    /// `now_ms`. The tokens expired.
    fn expire_unused_tokens(&mut self, now_ms: i64) -> Result<u64, StorageError>;

    /// Stores a new enrolment token (by its hash).
    fn insert_token(&mut self, token_hash: &str, row: &TokenRow) -> Result<(), StorageError>;
    /// Looks a token up by its hash.
    fn token(&mut self, token_hash: &str) -> Result<Option<TokenRow>, StorageError>;
    /// Marks an unused token used by `device_id`. False when it was
    /// already used (the caller lost a race).
    fn use_token(
        &mut self,
        token_hash: &str,
        device_id: Uuid,
        public_key: &[u8; 32],
        at_ms: i64,
    ) -> Result<bool, StorageError>;

    /// Inserts an enrolled device.
    fn insert_device(&mut self, device: &NewDevice) -> Result<(), StorageError>;
    /// Reads a device.
    fn device(&mut self, device_id: Uuid) -> Result<Option<Device>, StorageError>;
    /// Revokes a device. False when it does not exist; revoking twice keeps
    /// the first time.
    fn revoke_device(&mut self, device_id: Uuid, at_ms: i64) -> Result<bool, StorageError>;
    /// Records an authenticated sync request.
    /// Only if `seen.counter` is above the device's last request counter
    /// (which it then becomes): returns `false`, and records nothing, for
    /// a replayed or reordered request.
    fn record_sync(&mut self, device_id: Uuid, seen: &SyncSeen) -> Result<bool, StorageError>;
    /// Records the feed position the device's answer carries.
    fn set_feed_sent(&mut self, device_id: Uuid, cursor: u64) -> Result<(), StorageError>;
    /// Moves a device's chain to its newest applied change set.
    fn advance_device(&mut self, device_id: Uuid, seq: u64, hash: &Hash) -> Result<(), StorageError>;
    /// Sets the lineage of the store the device syncs from; `adopted`
    /// counts an adoption of the server's chain position.
    fn set_lineage(&mut self, device_id: Uuid, lineage: &[u8; 16], adopted: bool)
    -> Result<(), StorageError>;
    /// Counts a request refused as coming from another copy of the store.
    fn record_clone_refusal(&mut self, device_id: Uuid, at_ms: i64) -> Result<(), StorageError>;
    /// Records that the device's next change set was refused for good
    /// (until [`WriteTx::advance_device`] clears it).
    fn record_refusal(&mut self, device_id: Uuid, refusal: &DeviceRefusal) -> Result<(), StorageError>;

    /// The hash of a device's logged change set `seq`, if logged.
    fn logged_hash(&mut self, device_id: Uuid, seq: u64) -> Result<Option<Hash>, StorageError>;
    /// Appends to the change-set log.
    fn append_change_set(&mut self, entry: &LogEntry<'_>) -> Result<(), StorageError>;

    /// Loads a record.
    fn load_record(&mut self, record_id: Uuid) -> Result<Option<StoredRecord>, StorageError>;
    /// Inserts a new record.
    fn insert_record(&mut self, record: &StoredRecord) -> Result<(), StorageError>;
    /// Replaces an existing record's document and status.
    fn update_record(&mut self, record: &StoredRecord) -> Result<(), StorageError>;

    /// The KIdC issued to a record, if any.
    fn issued_kidc(&mut self, record_id: Uuid) -> Result<Option<Kidc>, StorageError>;
    /// Appends to the issuance log. False (and nothing written) when the
    /// code or the record already has an entry.
    fn insert_issuance(&mut self, issuance: &Issuance<'_>) -> Result<bool, StorageError>;

    /// Appends a change of a stored record to the pull feed of the
    /// devices of its office (`to`). A tablet's change is not kept when no
    /// other device of the office is enrolled: a device enrolled later
    /// starts from a snapshot that holds it.
    fn append_feed(
        &mut self,
        to: FeedTo<'_>,
        record_id: Uuid,
        change: &[u8],
        at_ms: i64,
    ) -> Result<(), StorageError>;
    /// Starts the feed of a newly enrolled device: a snapshot of every
    /// record of its office (each record's stored document, addressed to
    /// it), and the office's rows before now skipped. Returns how many
    /// records the snapshot holds.
    fn seed_office_feed(&mut self, device_id: Uuid, office: &str, at_ms: i64) -> Result<u64, StorageError>;
    /// The feed of `device_id` after `cursor`, oldest first, at most
    /// `limit`: the rows addressed to it, and its office's rows after its
    /// enrolment, but for its own tablet changes.
    fn server_changes_since(
        &mut self,
        device_id: Uuid,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<ServerChange>, StorageError>;

    /// Every device.
    fn list_devices(&mut self) -> Result<Vec<Device>, StorageError>;

    /// Records that a record is held (again) for `reason`.
    fn insert_hold(
        &mut self,
        record_id: Uuid,
        office: &str,
        reason: &str,
        at_ms: i64,
    ) -> Result<(), StorageError>;
    /// The record's hold, if it is held and not released.
    fn hold(&mut self, record_id: Uuid) -> Result<Option<HoldRow>, StorageError>;
    /// The next registration sequence number of `office` in `year`
    /// (1, 2, ...), counted in this transaction: one above both the
    /// database's counter and `above` (the highest the KIdC ledger holds,
    /// so that a database restored from an older backup never issues a
    /// number again). The counter becomes the number returned.
    fn next_registration_seq(&mut self, office: &str, year: i32, above: u64) -> Result<u64, StorageError>;
    /// Raises the counter of `office` in `year` to `seq` if it is below
    /// (a number the ledger gives back to its record after a restore).
    fn raise_registration_counter(&mut self, office: &str, year: i32, seq: u64) -> Result<(), StorageError>;
    /// Audits a release attempt; when it released the record, marks the
    /// hold released.
    fn audit_release(&mut self, audit: &ReleaseAudit<'_>) -> Result<(), StorageError>;

    /// Audits an unblock and arms it: the device's change set `seq` will
    /// be set aside.
    fn request_unblock(&mut self, audit: &UnblockAudit<'_>) -> Result<(), StorageError>;
    /// Sets a change set aside: keeps its bytes, marks its records, moves
    /// the device's chain past it, and clears its block.
    fn set_aside(&mut self, entry: &LogEntry<'_>, records: &[Uuid]) -> Result<(), StorageError>;
    /// The hash of a device's change set `seq`, if it was set aside.
    fn set_aside_hash(&mut self, device_id: Uuid, seq: u64) -> Result<Option<Hash>, StorageError>;
    /// Whether a record was set aside.
    fn is_set_aside(&mut self, record_id: Uuid) -> Result<bool, StorageError>;
    /// Those of `records` that were set aside ([`WriteTx::is_set_aside`]
    /// of each; a backend may ask once).
    fn set_aside_among(&mut self, records: &[Uuid]) -> Result<std::collections::HashSet<Uuid>, StorageError> {
        let mut out = std::collections::HashSet::new();
        for &r in records {
            if self.is_set_aside(r)? {
                out.insert(r);
            }
        }
        Ok(out)
    }

    /// A roster row (current or removed) by staff id or [`staff_key`].
    fn staff(&mut self, office: &str, staff: &str) -> Result<Option<StaffMember>, StorageError>;
    /// Adds a staff member to an office's roster, or updates one already
    /// on it (the roles; the PIN if a hash is given), and appends every
    /// change to the history ([`plan_staff_put`]). Staff ids are compared
    /// by [`staff_key`]: `CLERK-01` and `clerk-01` are one person.
    fn put_staff(&mut self, put: &StaffPut<'_>) -> Result<StaffPutOutcome, StorageError>;
    /// Takes a person off the roster: `removed_at` set, the PIN hash
    /// dropped, `removed` appended to the history. `None` (nothing
    /// written) when the person is not on the roster.
    fn remove_staff(
        &mut self,
        office: &str,
        staff: &str,
        by: &str,
        at_ms: i64,
    ) -> Result<Option<StaffMember>, StorageError>;
    /// The roster of an office, current and removed members, by staff id.
    fn roster(&mut self, office: &str) -> Result<Vec<StaffMember>, StorageError>;
    /// [`Storage::staff_role_at`] inside the transaction.
    fn staff_role_at(&mut self, office: &str, staff: &str, at_ms: i64)
    -> Result<Option<Roles>, StorageError>;
    /// Stores a new API key.
    fn insert_api_key(&mut self, key: &ApiKeyRow) -> Result<(), StorageError>;
    /// Revokes an API key. False when it does not exist; revoking twice
    /// keeps the first time.
    fn revoke_api_key(&mut self, id: Uuid, at_ms: i64) -> Result<bool, StorageError>;

    /// Stores a new notification. False, and nothing written, when one
    /// with the same source system and reference exists (the caller reads
    /// it with [`WriteTx::notification_by_source`]).
    fn insert_notification(&mut self, notification: &StoredNotification) -> Result<bool, StorageError>;
    /// Records that `record_id` registered the notification
    /// `notification_id`, if it is one of `kind` routed to `office` and
    /// not registered yet. Returns whether it was.
    fn register_notification(
        &mut self,
        notification_id: Uuid,
        record_id: Uuid,
        office: &str,
        kind: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError>;
    /// The notification a system sent under `reference`, if any.
    fn notification_by_source(
        &mut self,
        system: &str,
        reference: &str,
    ) -> Result<Option<StoredNotification>, StorageError>;

    /// Records an automerge actor id (hex) the server uses.
    fn add_server_actor(&mut self, actor_hex: &str, at_ms: i64) -> Result<(), StorageError>;
    /// Every automerge actor id (hex) the server ever used.
    fn server_actors(&mut self) -> Result<Vec<String>, StorageError>;

    // The Population Registry ([`crate::registry`]).

    /// Appends to the registry's event log; returns the entry's `seq`
    /// (the one in `row` is ignored), or `None` (nothing written) when
    /// the log already holds the record.
    fn registry_append_event(&mut self, row: &RegistryEventRow) -> Result<Option<u64>, StorageError>;
    /// The registry's event log after `seq`, oldest first, at most `limit`.
    fn registry_events_after(
        &mut self,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<RegistryEventRow>, StorageError>;
    /// A person by id.
    fn registry_person(&mut self, person_id: Uuid) -> Result<Option<RegistryPerson>, StorageError>;
    /// A person by KIdC.
    fn registry_person_by_kidc(&mut self, kidc: &Kidc) -> Result<Option<RegistryPerson>, StorageError>;
    /// A person by identity document (kind, number).
    fn registry_person_by_document(
        &mut self,
        kind: &str,
        number: &str,
    ) -> Result<Option<RegistryPerson>, StorageError>;
    /// Inserts a person, or replaces the row of the same id.
    fn registry_put_person(&mut self, person: &RegistryPerson) -> Result<(), StorageError>;
    /// Records a person's identity document. False (nothing written) when
    /// the document is already recorded (for anyone).
    fn registry_add_document(
        &mut self,
        person_id: Uuid,
        kind: &str,
        number: &str,
        seq: u64,
    ) -> Result<bool, StorageError>;
    /// Links a child to a parent (`mother`, `father`, `adoptive`); a link
    /// already there stays as it is.
    fn registry_add_parent(
        &mut self,
        child_id: Uuid,
        parent_id: Uuid,
        relation: &str,
        seq: u64,
    ) -> Result<(), StorageError>;
    /// Appends to a person's marital history.
    fn registry_add_marital(
        &mut self,
        person_id: Uuid,
        seq: u64,
        status: &str,
        since: Option<&str>,
    ) -> Result<(), StorageError>;
    /// Records a person's part in a registry event.
    fn registry_link_event(&mut self, person_id: Uuid, seq: u64, role: &str) -> Result<(), StorageError>;
    /// Inserts a marriage, or replaces the row of the same id (to end it).
    fn registry_put_marriage(&mut self, marriage: &RegistryMarriage) -> Result<(), StorageError>;
    /// The person's current (not ended) marriage, if any.
    fn registry_current_marriage(
        &mut self,
        person_id: Uuid,
    ) -> Result<Option<RegistryMarriage>, StorageError>;
    /// Empties the registry's state (never its event log), for a rebuild.
    fn registry_clear(&mut self) -> Result<(), StorageError>;
    /// [`Storage::registry_dump`] inside the transaction.
    fn registry_dump(&mut self) -> Result<RegistryDump, StorageError>;
}

/// The registry's state tables as [`RegistryDump`] reads them, on every
/// backend: (table, its columns, the columns naming persons, primary-key
/// order). Both backends give the same dump of the same registry.
pub(crate) const REGISTRY_DUMP_TABLES: &[(&str, &str, &[usize], &str)] = &[
    (
        "registry_persons",
        "person_id, kidc, family_name, given_name, family_name_latin, given_name_latin, sex, \
         date_of_birth, place_of_birth_kind, place_of_birth_facility, place_of_birth_village, \
         nationality, citizenship, marital_status, residence_village_code, date_of_death, \
         death_record_id, first_seq, last_seq",
        &[0],
        "person_id",
    ),
    (
        "registry_documents",
        "person_id, kind, number, seq",
        &[0],
        "kind, number",
    ),
    (
        "registry_parents",
        "child_id, parent_id, relation, seq",
        &[0, 1],
        "child_id, parent_id, relation",
    ),
    (
        "registry_marriages",
        "spouse_a, spouse_b, marriage_id, date_of_marriage, place_village, ended_on, ended_by, end_record_id",
        &[0, 1],
        "marriage_id",
    ),
    (
        "registry_marital_history",
        "person_id, seq, status, since",
        &[0],
        "person_id, seq",
    ),
    (
        "registry_person_events",
        "person_id, seq, role",
        &[0],
        "person_id, seq, role",
    ),
];
