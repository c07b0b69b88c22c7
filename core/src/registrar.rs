//! [`Registrar`]: the tablet engine's public API, one object per open store.
//!
//! It owns the store's single writer connection (behind a mutex, so the
//! object is `Send + Sync` and a binding can share it between threads) and
//! the unwrapped data key. Every mutation runs in one SQLite transaction;
//! a refused action stores nothing.
//!
//! **API boundary:** this is what `crvs` (the CLI) and `crvs-mobile` (the
//! uniffi facade) call. It returns JSON strings where a binding would
//! otherwise need to mirror record types (`record_json`, `list_json`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use crvs_schema::enrol::{self, EnrolmentToken};
use crvs_schema::evidence::IssuanceProof;
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::record::{self, RecordKind, RecordView};
use crvs_schema::wire::{self, ChainPosition, RecordChanges, SignedChangeSet, SyncRequest, SyncResponse};
use crvs_schema::workflow::{self, Action, Transition};
use crvs_schema::{BirthRegistration, Date};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::Rng;
use rusqlite::{Connection, Transaction};
use serde_json::{Value as Json, json};
use zeroize::Zeroizing;

use crate::crypto::{DataKey, KdfParams, Passphrase, WrappedKey, aad};
use crate::error::{Error, Result};
use crate::store::{self, OutboxRow, RecordRow, meta};
use crate::sync::{self, Chain, SyncObserver, SyncPhase, SyncProgress, SyncReport};
use crate::transport::{HttpTransport, Transport};

/// A record's id: a UUIDv7 minted on the tablet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    /// A new UUIDv7 by the device clock (the epoch if the clock reads
    /// before it: never a panic). [`Registrar`] mints ids with
    /// [`RecordId::at`] after [`checked_now_ms`].
    pub fn new() -> RecordId {
        RecordId::at(now_ms())
    }

    /// A new UUIDv7 for the instant `unix_ms` (clamped to 0 below the
    /// epoch), with 74 random bits.
    pub fn at(unix_ms: i64) -> RecordId {
        RecordId(*uuid_v7_at(unix_ms).as_bytes())
    }

    /// Parses the hyphenated UUID form.
    pub fn parse(s: &str) -> Result<RecordId> {
        uuid::Uuid::parse_str(s.trim())
            .map(|u| RecordId(*u.as_bytes()))
            .map_err(|_| Error::InvalidInput("a record id must be a UUID".into()))
    }
}

impl Default for RecordId {
    fn default() -> Self {
        RecordId::new()
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl std::str::FromStr for RecordId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RecordId::parse(s)
    }
}

/// Whether the server has everything the tablet changed in a record.
///
/// * `pending`: the record has changes the server has not acknowledged,
///   either not yet put into a change set or in a change set still waiting
///   for its acknowledgement.
/// * `synced`: every change made on this tablet is acknowledged.
///
/// When the server's own changes (a KIdC, a hold) last arrived is shown
/// beside it, as `server_updated_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Changes wait for the server's acknowledgement.
    Pending,
    /// The server acknowledged every change.
    Synced,
    /// The server set it aside (an operator unblocked this tablet, stuck
    /// behind a change set that carried it): nothing of it is sent; it
    /// must be registered again.
    SetAside,
}

impl SyncState {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Pending => "pending",
            SyncState::Synced => "synced",
            SyncState::SetAside => "set_aside",
        }
    }

    fn of(row: &RecordRow, acked_seq: u64) -> SyncState {
        if row.set_aside_at.is_some() {
            SyncState::SetAside
        } else if row.dirty || row.last_outbox_seq.is_some_and(|s| s > acked_seq) {
            SyncState::Pending
        } else {
            SyncState::Synced
        }
    }
}

/// A record, decrypted.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its id.
    pub id: RecordId,
    /// Its document, decoded.
    pub view: RecordView,
    /// Its sync state.
    pub sync_state: SyncState,
    /// Device clock at creation, ms.
    pub created_at_ms: i64,
    /// Device clock at the last change, ms.
    pub updated_at_ms: i64,
    /// Device clock when the server's changes last arrived, ms.
    pub server_updated_at_ms: Option<i64>,
}

/// A line of the record list: no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary {
    /// Its id.
    pub id: RecordId,
    /// Kind of event.
    pub kind: String,
    /// Workflow state.
    pub status: String,
    /// Sync state.
    pub sync_state: SyncState,
    /// The KIdC, once assigned.
    pub kidc: Option<String>,
    /// The server's hold reason code, while the server holds it.
    pub hold: Option<String>,
    /// Device clock at creation, ms.
    pub created_at_ms: i64,
    /// Device clock when the server's changes last arrived, ms.
    pub server_updated_at_ms: Option<i64>,
}

/// What enrolment gave the tablet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The device id the server assigned.
    pub device_id: String,
    /// The office the device may write.
    pub office: String,
}

struct Enrolled {
    device_id: [u8; 16],
    server_url: String,
    server_ca: Option<String>,
    server_key: VerifyingKey,
    signing_key: SigningKey,
}

/// An open tablet store.
pub struct Registrar {
    dir: PathBuf,
    conn: Mutex<Connection>,
    key: DataKey,
    actor: ActorId,
    office: String,
    /// The Argon2id setting this build asks for: the store's is raised to
    /// it on unlock, and a passphrase change never goes below it.
    kdf: KdfParams,
    sync_lock: Mutex<()>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("dir", &self.dir)
            .field("office", &self.office)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch by the device clock (not trusted for
/// anything security-relevant: the server records its own time); 0 when
/// the clock reads before the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The earliest device clock taken as set, 2025-01-01T00:00:00Z (in ms
/// since the epoch): this software did not exist before, so a clock that
/// reads earlier has been reset (a flat clock battery reads 1970, 2000 or
/// the firmware's date) and would stamp records, and judge dates of birth,
/// wrongly.
pub const EARLIEST_CLOCK_MS: i64 = 1_735_689_600_000;

/// The device clock in ms since the epoch, or [`Error::Clock`] when it
/// reads before [`EARLIEST_CLOCK_MS`] (before 1970 included).
pub fn checked_now_ms() -> Result<i64> {
    check_clock(SystemTime::now())
}

/// [`checked_now_ms`] for the instant `now`.
pub fn check_clock(now: SystemTime) -> Result<i64> {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) if d.as_millis() >= EARLIEST_CLOCK_MS as u128 => {
            Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        _ => Err(Error::Clock),
    }
}

/// A UUIDv7 for `unix_ms` without `Uuid::now_v7`, which panics when the
/// clock reads before 1970.
fn uuid_v7_at(unix_ms: i64) -> uuid::Uuid {
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    uuid::Builder::from_unix_timestamp_millis(unix_ms.max(0) as u64, &random).into_uuid()
}

const WRAP_AAD: &[u8] = b"meta\0\0wrapped_data_key";
const SIGNING_KEY_AAD: &[u8] = b"meta\0\0signing_key";
const PENDING_SIGNING_KEY_AAD: &[u8] = b"meta\0\0pending_signing_key";
/// The highest server request counter a tablet adopts: far below
/// `u64::MAX`, so that even a forged answer cannot leave it no room.
const MAX_ADOPTED_COUNTER: u64 = 1 << 62;

fn doc_aad(id: &[u8; 16]) -> Vec<u8> {
    aad("records", id, "doc")
}

fn kidc_aad(id: &[u8; 16]) -> Vec<u8> {
    aad("records", id, "kidc")
}

fn evidence_aad(id: &[u8; 16]) -> Vec<u8> {
    aad("kidc_evidence", id, "proof")
}

fn outbox_aad(seq: u64) -> Vec<u8> {
    aad("outbox", &seq.to_be_bytes(), "body")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock rolled back its transaction (rusqlite
    // rolls back on drop), so the connection is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn heads_to_bytes(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn heads_from_bytes(bytes: &[u8]) -> Result<Vec<ChangeHash>> {
    if !bytes.len().is_multiple_of(32) {
        return Err(Error::Corrupt("a record's outboxed heads are malformed".into()));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            ChangeHash(h)
        })
        .collect())
}

/// Wraps `key` again under `passphrase` with `kdf` and a new salt, and
/// replaces `old` with it in one immediate transaction if `old` is still
/// the stored wrapping (another process may have re-wrapped it or changed
/// the passphrase meanwhile: then nothing is written). Returns whether it
/// wrote.
fn rewrap(
    conn: &mut Connection,
    key: &DataKey,
    passphrase: &Passphrase,
    old: &WrappedKey,
    kdf: KdfParams,
) -> Result<bool> {
    // The slow derivation runs before the transaction, so no writer waits
    // for it.
    let new = key.wrap(passphrase, kdf, WRAP_AAD)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !store::replace_wrapped_key(&tx, old, &new)? {
        return Ok(false);
    }
    tx.commit()?;
    Ok(true)
}

impl Registrar {
    /// Creates a new store in `dir` for the office `commune` (a 6-digit
    /// gazetteer commune code), protected by `passphrase`, which must pass
    /// [`crate::crypto::check_strength`] ([`Error::WeakPassphrase`]
    /// otherwise).
    pub fn init(dir: impl AsRef<Path>, passphrase: &Passphrase, commune: &str) -> Result<Registrar> {
        Registrar::init_with_kdf(dir, passphrase, commune, KdfParams::PRODUCTION)
    }

    /// [`Registrar::init`] with chosen Argon2id parameters. Production code
    /// uses [`KdfParams::PRODUCTION`]; [`KdfParams::INSECURE_FOR_TESTS`]
    /// exists only to make tests fast. The passphrase is checked all the
    /// same.
    pub fn init_with_kdf(
        dir: impl AsRef<Path>,
        passphrase: &Passphrase,
        commune: &str,
        kdf: KdfParams,
    ) -> Result<Registrar> {
        let dir = dir.as_ref();
        if passphrase.is_empty() {
            return Err(Error::InvalidInput("the passphrase must not be empty".into()));
        }
        let office = GazetteerCode::parse_level(commune.trim(), Level::Commune)
            .map_err(|e| Error::InvalidInput(format!("commune code {e}")))?;
        let now = checked_now_ms()?;
        crate::crypto::check_strength(passphrase, office.as_str())?;
        let mut conn = store::open(dir, true)?;
        store::migrate(&mut conn)?;
        let key = DataKey::generate();
        let wrapped = key.wrap(passphrase, kdf, WRAP_AAD)?;
        let mut actor = [0u8; 16];
        rand::rng().fill_bytes(&mut actor);
        let tx = conn.transaction()?;
        store::set_meta(&tx, meta::STORE_ID, uuid_v7_at(now).to_string())?;
        store::set_meta(&tx, meta::OFFICE, office.as_str())?;
        store::set_meta(&tx, meta::KDF_PARAMS, wrapped.params.encode())?;
        store::set_meta(&tx, meta::KDF_SALT, wrapped.salt.clone())?;
        store::set_meta(&tx, meta::WRAPPED_KEY, wrapped.sealed.clone())?;
        store::set_meta(&tx, meta::ACTOR, actor.to_vec())?;
        store::set_meta(&tx, meta::CURSOR, 0i64)?;
        store::set_meta(&tx, meta::NEXT_SEQ, 1i64)?;
        store::set_meta(&tx, meta::LAST_HASH, vec![0u8; 32])?;
        store::set_meta(&tx, meta::ACKED_SEQ, 0i64)?;
        // Written last: a store without it never finished its creation.
        store::set_meta(&tx, meta::MAGIC, store::MAGIC)?;
        tx.commit()?;
        tracing::info!(office = office.as_str(), "store created");
        Ok(Registrar {
            dir: dir.to_path_buf(),
            conn: Mutex::new(conn),
            key,
            actor: ActorId::from(actor),
            office: office.as_str().to_string(),
            kdf,
            sync_lock: Mutex::new(()),
        })
    }

    /// Opens the store in `dir`. A wrong passphrase gives
    /// [`Error::WrongPassphrase`] and changes nothing. A store whose key is
    /// wrapped with a cheaper Argon2id setting than
    /// [`KdfParams::PRODUCTION`] is re-wrapped with it (see
    /// [`Registrar::open_with_kdf`]).
    pub fn open(dir: impl AsRef<Path>, passphrase: &Passphrase) -> Result<Registrar> {
        Registrar::open_with_kdf(dir, passphrase, KdfParams::PRODUCTION)
    }

    /// [`Registrar::open`], raising the store's Argon2id setting to `kdf`
    /// when the stored one [is weaker](KdfParams::is_weaker_than): the
    /// data key is wrapped again under the same passphrase with a new salt,
    /// and the parameters, salt and wrapped key are replaced in one
    /// transaction, so a crash leaves either the old wrapping or the new,
    /// and the passphrase opens both. A stronger stored setting is kept.
    /// If the re-wrap cannot be written (a full disk), the store still
    /// opens and the next unlock tries again.
    pub fn open_with_kdf(
        dir: impl AsRef<Path>,
        passphrase: &Passphrase,
        kdf: KdfParams,
    ) -> Result<Registrar> {
        let dir = dir.as_ref();
        let mut conn = store::open(dir, false)?;
        let wrapped = store::read_wrapped_key(&conn)?;
        let key = DataKey::unwrap(passphrase, &wrapped, WRAP_AAD)?;
        // Migrations run only once the passphrase is known to be right.
        store::migrate(&mut conn)?;
        if wrapped.params.is_weaker_than(&kdf) {
            match rewrap(&mut conn, &key, passphrase, &wrapped, kdf) {
                Ok(true) => tracing::info!(
                    from = %wrapped.params.encode(),
                    to = %kdf.encode(),
                    "store key re-wrapped with a stronger key derivation"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    code = e.code(),
                    "the store key could not be re-wrapped; next unlock retries"
                ),
            }
        }
        let actor: Vec<u8> = store::require_meta(&conn, meta::ACTOR)?;
        if actor.len() != 16 {
            return Err(Error::Corrupt("the store's actor id is malformed".into()));
        }
        let office: String = store::require_meta(&conn, meta::OFFICE)?;
        Ok(Registrar {
            dir: dir.to_path_buf(),
            conn: Mutex::new(conn),
            key,
            actor: ActorId::from(actor.as_slice()),
            office,
            kdf,
            sync_lock: Mutex::new(()),
        })
    }

    /// The Argon2id setting the store's key is wrapped with now.
    pub fn kdf_params(&self) -> Result<KdfParams> {
        Ok(store::read_wrapped_key(&lock(&self.conn))?.params)
    }

    /// Changes the store's passphrase: `old` must unwrap the stored key
    /// ([`Error::WrongPassphrase`] otherwise, nothing changed) and `new`
    /// must pass the strength check ([`Error::WeakPassphrase`]) and differ
    /// from `old`. The data key is wrapped under `new` with a fresh salt
    /// and the stronger of the stored and the build's Argon2id settings,
    /// and replaced in one transaction: afterwards `old` no longer opens
    /// the store. Nothing else is re-encrypted (the data key stays).
    pub fn change_passphrase(&self, old: &Passphrase, new: &Passphrase) -> Result<()> {
        crate::crypto::check_strength(new, &self.office)?;
        if new == old {
            return Err(Error::InvalidInput(
                "the new passphrase must differ from the old one".into(),
            ));
        }
        // The key derivations run outside the lock and the transaction; the
        // replacement only happens if the stored key is still the one `old`
        // unwrapped.
        let current = store::read_wrapped_key(&lock(&self.conn))?;
        let unwrapped = DataKey::unwrap(old, &current, WRAP_AAD)?;
        if !unwrapped.same_key(&self.key) {
            return Err(Error::Corrupt(
                "the store's wrapped key is not this store's key".into(),
            ));
        }
        let params = current.params.at_least(self.kdf);
        let wrapped = self.key.wrap(new, params, WRAP_AAD)?;
        let mut conn = lock(&self.conn);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !store::replace_wrapped_key(&tx, &current, &wrapped)? {
            return Err(Error::NotAllowed(
                "the passphrase was changed meanwhile by another process; open the store again".into(),
            ));
        }
        tx.commit()?;
        tracing::info!(kdf = %params.encode(), "store passphrase changed");
        Ok(())
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The registration office of this store.
    pub fn office(&self) -> &str {
        &self.office
    }

    /// A keyed hash of a normalized token (a name, a document number), for
    /// searches that must not store the token itself.
    pub fn lookup_hash(&self, token: &str) -> [u8; 32] {
        self.key.lookup_hash(token)
    }

    /// The device id, once enrolled.
    pub fn device_id(&self) -> Result<Option<String>> {
        store::get_meta(&lock(&self.conn), meta::DEVICE_ID)
    }

    /// Enrols this tablet with the server at `server_url` using a one-time
    /// `token`: generates the device key pair, pins the server's key.
    /// Refuses, storing nothing, when the token is for another office.
    ///
    /// `ca_pem` is the CA certificate (PEM) the operators handed over, for
    /// a server whose TLS certificate does not chain to a web root. It is
    /// checked before anything is sent (`InvalidInput`: "the CA file is not
    /// a PEM certificate"), stored with the enrolment, and trusted for
    /// every later sync. A TLS certificate the tablet does not trust is
    /// [`Error::Certificate`]; the token is then not used up.
    pub fn enroll(&self, server_url: &str, token: &str, ca_pem: Option<&str>) -> Result<Enrollment> {
        let transport = HttpTransport::with_ca(server_url, ca_pem)?;
        self.enroll_inner(&transport, server_url, token, ca_pem)
    }

    /// [`Registrar::enroll`] over any transport (no CA is stored).
    pub fn enroll_with(
        &self,
        transport: &dyn Transport,
        server_url: &str,
        token: &str,
    ) -> Result<Enrollment> {
        self.enroll_inner(transport, server_url, token, None)
    }

    fn enroll_inner(
        &self,
        transport: &dyn Transport,
        server_url: &str,
        token: &str,
        ca_pem: Option<&str>,
    ) -> Result<Enrollment> {
        if self.device_id()?.is_some() {
            return Err(Error::NotAllowed("this store is already enrolled".into()));
        }
        let token = EnrolmentToken::parse(token).map_err(|e| Error::InvalidInput(e.to_string()))?;
        // The key is made once and kept (sealed) until enrolment completes:
        // enrolling again with the same token, after a lost or forged
        // answer, presents the same key and gets the same device.
        let signing_key = self.pending_signing_key()?;
        let public_key = signing_key.verifying_key().to_bytes();
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let request = enrol::enroll_request(&token, &public_key, Some(&self.office), nonce);
        let answer = transport.enroll(&request)?;
        // The answer counts only if the key the token vouches for signed it,
        // for this request. Anything else is a machine in the middle (or the
        // wrong server): nothing is stored, and the token stays good.
        let server_key = answer
            .verify(&request.public_key, &request.nonce)
            .map_err(|_| Error::Protocol("the enrolment answer's signature does not verify".into()))?;
        if !token.is_for_server(&server_key) {
            tracing::warn!("enrolment answer signed by a key the token does not name");
            return Err(Error::Protocol(
                "the server's key does not match the enrolment token: the connection may be \
                 intercepted, or the address is not the one the token was made for. Nothing was \
                 stored; check the server address and enrol again"
                    .into(),
            ));
        }
        if answer.office != self.office {
            return Err(Error::NotAllowed(format!(
                "the token is for office {}, but this store belongs to office {}",
                answer.office, self.office
            )));
        }
        let device = uuid::Uuid::parse_str(&answer.device_id)
            .map_err(|_| Error::Protocol("the server's device id is not a UUID".into()))?;
        let server_key = server_key.to_bytes();
        let secret = Zeroizing::new(signing_key.to_bytes());
        let sealed = self.key.seal(SIGNING_KEY_AAD, secret.as_ref());
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        store::set_meta(&tx, meta::DEVICE_ID, device.to_string())?;
        store::set_meta(&tx, meta::SERVER_URL, server_url.trim().trim_end_matches('/'))?;
        store::set_meta(&tx, meta::SERVER_KEY, server_key.to_vec())?;
        store::set_meta(&tx, meta::SIGNING_KEY, sealed)?;
        tx.execute("DELETE FROM meta WHERE key = ?1", [meta::PENDING_SIGNING_KEY])?;
        if let Some(ca) = ca_pem {
            store::set_meta(&tx, meta::SERVER_CA, ca.trim())?;
        }
        tx.commit()?;
        tracing::info!(device = %device, "tablet enrolled");
        Ok(Enrollment {
            device_id: device.to_string(),
            office: answer.office,
        })
    }

    /// The device key of an enrolment in progress, made and stored
    /// (sealed) on first use.
    fn pending_signing_key(&self) -> Result<SigningKey> {
        let conn = &mut *lock(&self.conn);
        if let Some(sealed) = store::get_meta::<Vec<u8>>(conn, meta::PENDING_SIGNING_KEY)? {
            let secret = self.key.open(PENDING_SIGNING_KEY_AAD, &sealed)?;
            let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
                secret
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("the pending device key is malformed".into()))?,
            );
            return Ok(SigningKey::from_bytes(&secret));
        }
        let key = SigningKey::generate(&mut rand::rng());
        let secret = Zeroizing::new(key.to_bytes());
        let tx = conn.transaction()?;
        store::set_meta(
            &tx,
            meta::PENDING_SIGNING_KEY,
            self.key.seal(PENDING_SIGNING_KEY_AAD, secret.as_ref()),
        )?;
        tx.commit()?;
        Ok(key)
    }

    fn enrolled(&self, conn: &Connection) -> Result<Enrolled> {
        let Some(device) = store::get_meta::<String>(conn, meta::DEVICE_ID)? else {
            return Err(Error::NotEnrolled);
        };
        let device_id = *uuid::Uuid::parse_str(&device)
            .map_err(|_| Error::Corrupt("the stored device id is malformed".into()))?
            .as_bytes();
        let server_url: String = store::require_meta(conn, meta::SERVER_URL)?;
        let server_ca: Option<String> = store::get_meta(conn, meta::SERVER_CA)?;
        let server_key: Vec<u8> = store::require_meta(conn, meta::SERVER_KEY)?;
        let server_key = server_key
            .as_slice()
            .try_into()
            .ok()
            .and_then(|k: [u8; 32]| VerifyingKey::from_bytes(&k).ok())
            .ok_or_else(|| Error::Corrupt("the pinned server key is malformed".into()))?;
        let sealed: Vec<u8> = store::require_meta(conn, meta::SIGNING_KEY)?;
        let secret = self.key.open(SIGNING_KEY_AAD, &sealed)?;
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
            secret
                .as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt("the device key is malformed".into()))?,
        );
        Ok(Enrolled {
            device_id,
            server_url,
            server_ca,
            server_key,
            signing_key: SigningKey::from_bytes(&secret),
        })
    }

    /// The device name written into transitions: the device id once
    /// enrolled, else this store's actor id.
    fn device_label(&self, conn: &Connection) -> Result<String> {
        Ok(store::get_meta::<String>(conn, meta::DEVICE_ID)?.unwrap_or_else(|| self.actor.to_hex_string()))
    }

    fn load_doc(&self, row: &RecordRow) -> Result<AutoCommit> {
        let bytes = self.key.open(&doc_aad(&row.id), &row.doc_sealed)?;
        Ok(AutoCommit::load(&bytes)?.with_actor(self.actor.clone()))
    }

    /// Registers a birth from its JSON (see the fixtures), entered by the
    /// staff member `by`. An invalid registration gives
    /// [`Error::InvalidRecord`] naming every bad field, and stores nothing;
    /// it is checked at this store's office (`validate_at_office`: the
    /// residence lies in its commune unless the registration says the
    /// family registers away from home). A device clock that is not set
    /// gives [`Error::Clock`].
    pub fn register_birth(&self, json: &str, by: &str) -> Result<RecordId> {
        let now = checked_now_ms()?;
        let office = GazetteerCode::parse_level(&self.office, Level::Commune)
            .map_err(|_| Error::Corrupt("the store's office is not a commune code".into()))?;
        let registration =
            BirthRegistration::from_json_str_at_office(json, Date::today_in_cambodia(now), &office)?;
        let mut conn = lock(&self.conn);
        let submission = Transition {
            action: Action::Submit,
            by: by.trim().to_string(),
            at_ms: now,
            device: self.device_label(&conn)?,
            reason: None,
        };
        let status = workflow::check_append(&[], &submission)?;
        let id = RecordId::at(now);
        let mut doc = record::new_record(
            self.actor.clone(),
            RecordKind::Birth,
            &self.office,
            &registration.to_json_value(),
            &submission,
        )?;
        let row = RecordRow {
            id: id.0,
            kind: RecordKind::Birth.as_str().to_string(),
            status: status.as_str().to_string(),
            created_at: now,
            updated_at: now,
            doc_sealed: self.key.seal(&doc_aad(&id.0), &doc.save()),
            kidc_sealed: None,
            outboxed_heads: Vec::new(),
            dirty: true,
            last_outbox_seq: None,
            server_updated_at: None,
            set_aside_at: None,
        };
        let tx = conn.transaction()?;
        store::insert_record(&tx, &row)?;
        tx.commit()?;
        tracing::info!(record = %id, "birth registered");
        Ok(id)
    }

    /// Records that `by` verified the record (a different staff member from
    /// the one who entered it).
    pub fn verify(&self, id: &RecordId, by: &str) -> Result<workflow::Status> {
        self.transition(id, Action::Verify, by, None)
    }

    /// Records that `by` approved the (verified) record.
    pub fn approve(&self, id: &RecordId, by: &str) -> Result<workflow::Status> {
        self.transition(id, Action::Approve, by, None)
    }

    /// Records that `by` rejected the record, for `reason` (required).
    pub fn reject(&self, id: &RecordId, by: &str, reason: &str) -> Result<workflow::Status> {
        self.transition(id, Action::Reject, by, Some(reason))
    }

    fn transition(
        &self,
        id: &RecordId,
        action: Action,
        by: &str,
        reason: Option<&str>,
    ) -> Result<workflow::Status> {
        let now = checked_now_ms()?;
        let mut conn = lock(&self.conn);
        let device = self.device_label(&conn)?;
        let tx = conn.transaction()?;
        let mut row = store::get_record(&tx, &id.0)?.ok_or(Error::NotFound)?;
        let mut doc = self.load_doc(&row)?;
        let view = record::read(&doc)?;
        let t = Transition {
            action,
            by: by.trim().to_string(),
            at_ms: now,
            device,
            reason: reason.map(|r| r.trim().to_string()),
        };
        workflow::check_append(&view.transitions, &t)?;
        record::append_transition(&mut doc, &t)?;
        let status = record::read(&doc)?.status()?;
        row.status = status.as_str().to_string();
        row.updated_at = now;
        row.dirty = true;
        row.doc_sealed = self.key.seal(&doc_aad(&id.0), &doc.save());
        store::update_record(&tx, &row)?;
        tx.commit()?;
        tracing::info!(record = %id, action = action.as_str(), "workflow step recorded");
        Ok(status)
    }

    fn acked_seq(conn: &Connection) -> Result<u64> {
        Ok(store::get_meta::<i64>(conn, meta::ACKED_SEQ)?.unwrap_or(0).max(0) as u64)
    }

    /// Reads and decrypts one record.
    pub fn record(&self, id: &RecordId) -> Result<Record> {
        let conn = lock(&self.conn);
        let row = store::get_record(&conn, &id.0)?.ok_or(Error::NotFound)?;
        let acked = Self::acked_seq(&conn)?;
        let doc = self.load_doc(&row)?;
        Ok(Record {
            id: *id,
            view: record::read(&doc)?,
            sync_state: SyncState::of(&row, acked),
            created_at_ms: row.created_at,
            updated_at_ms: row.updated_at,
            server_updated_at_ms: row.server_updated_at,
        })
    }

    /// The record as JSON, as `crvs show` prints it: `record_id`, `kind`,
    /// `office`, `status`, `sync_state`, `kidc` (once assigned), `data`,
    /// `transitions`, `conflicts`, `server`, and the times.
    pub fn record_json(&self, id: &RecordId) -> Result<String> {
        Ok(record_to_json(&self.record(id)?).to_string())
    }

    /// Every record, without personal data, oldest first.
    pub fn list(&self) -> Result<Vec<RecordSummary>> {
        let conn = lock(&self.conn);
        let acked = Self::acked_seq(&conn)?;
        store::all_records(&conn)?
            .into_iter()
            .map(|row| {
                let kidc = match &row.kidc_sealed {
                    Some(s) => Some(
                        String::from_utf8(self.key.open(&kidc_aad(&row.id), s)?.to_vec())
                            .map_err(|_| Error::Corrupt("a stored KIdC is malformed".into()))?,
                    ),
                    None => None,
                };
                // Only a held record's document is opened, for its reason.
                let hold = if row.status == workflow::Status::Held.as_str() {
                    record::read(&self.load_doc(&row)?)?.server.hold
                } else {
                    None
                };
                Ok(RecordSummary {
                    id: RecordId(row.id),
                    kind: row.kind.clone(),
                    status: row.status.clone(),
                    sync_state: SyncState::of(&row, acked),
                    kidc,
                    hold,
                    created_at_ms: row.created_at,
                    server_updated_at_ms: row.server_updated_at,
                })
            })
            .collect()
    }

    /// `{"records": [{record_id, kind, status, sync_state, kidc?,
    /// created_at, server_updated_at?}]}`.
    pub fn list_json(&self) -> Result<String> {
        let records: Vec<Json> = self.list()?.iter().map(summary_to_json).collect();
        Ok(json!({ "records": records }).to_string())
    }

    /// Checks every record and the outbox: each document decrypts and
    /// reads, each change set decrypts, the sequence numbers are 1..n and
    /// the hash chain links. Returns the number of records checked.
    pub fn check(&self) -> Result<usize> {
        let conn = lock(&self.conn);
        let rows = store::all_records(&conn)?;
        for row in &rows {
            let doc = self.load_doc(row)?;
            record::read(&doc)?.status()?;
        }
        let next_seq = store::get_meta::<i64>(&conn, meta::NEXT_SEQ)?.unwrap_or(1) as u64;
        let last_hash: Vec<u8> = store::require_meta(&conn, meta::LAST_HASH)?;
        let chain = store::outbox_chain(&conn)?;
        let verifying_key = match chain.is_empty() {
            true => None,
            false => Some(self.enrolled(&conn)?.signing_key.verifying_key()),
        };
        // The chain runs 1, 2, 3, ... except where the store adopted the
        // server's position: it then continues after the adopted change
        // set, from its hash.
        let adoptions: std::collections::HashMap<u64, [u8; 32]> =
            store::adoptions(&conn)?.into_iter().collect();
        let mut prev = [0u8; 32];
        let mut expected = 1u64;
        for (seq, hash) in &chain {
            if *seq != expected {
                let adopted = adoptions
                    .iter()
                    .filter(|(a, _)| **a + 1 == *seq && **a >= expected)
                    .map(|(_, h)| *h)
                    .next();
                match adopted {
                    Some(h) => prev = h,
                    None => {
                        return Err(Error::Corrupt(format!(
                            "the outbox skips from {} to {seq}",
                            expected - 1
                        )));
                    }
                }
            }
            expected = seq + 1;
            let row = store::outbox_from(&conn, *seq, 1)?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Corrupt("an outbox row vanished".into()))?;
            let bytes = self.key.open(&outbox_aad(*seq), &row.body_sealed)?;
            let signed = SignedChangeSet::from_bytes(bytes.to_vec())?;
            if signed.hash() != *hash || signed.seq() != *seq {
                return Err(Error::Corrupt(format!(
                    "outbox change set {seq} does not match its hash"
                )));
            }
            let Some(vk) = &verifying_key else { break };
            let body = signed.open(vk)?;
            if body.prev_hash != prev {
                return Err(Error::Corrupt(format!(
                    "outbox change set {seq} breaks the hash chain"
                )));
            }
            prev = *hash;
        }
        // After an adoption with nothing made since, the chain ends at the
        // adopted position.
        if let Some((&a, h)) = adoptions
            .iter()
            .filter(|(a, _)| **a >= expected)
            .max_by_key(|(a, _)| **a)
        {
            expected = a + 1;
            prev = *h;
        }
        if next_seq != expected || last_hash.as_slice() != prev {
            return Err(Error::Corrupt(
                "the outbox bookkeeping does not match its change sets".into(),
            ));
        }
        Ok(rows.len())
    }

    /// Syncs with the enrolled server over HTTP. See [`Registrar::sync_with`].
    pub fn sync(&self, observer: &dyn SyncObserver) -> Result<SyncReport> {
        let (url, ca) = {
            let conn = lock(&self.conn);
            let e = self.enrolled(&conn)?;
            (e.server_url, e.server_ca)
        };
        let transport = HttpTransport::with_ca(&url, ca.as_deref())?;
        self.sync_with(&transport, observer)
    }

    /// Puts new changes into signed change sets, pushes every
    /// unacknowledged change set in order, and applies the server's
    /// updates, over `transport`. Safe to interrupt at any point and to
    /// repeat.
    pub fn sync_with(&self, transport: &dyn Transport, observer: &dyn SyncObserver) -> Result<SyncReport> {
        let _one_sync_at_a_time = lock(&self.sync_lock);
        let mut report = SyncReport::default();
        let enrolled = {
            let conn = lock(&self.conn);
            self.enrolled(&conn)?
        };
        // (a) New changes into the outbox, in one transaction.
        report.change_sets_created = self.fill_outbox(&enrolled)?;
        let (acked_at_start, waiting) = {
            let conn = lock(&self.conn);
            let acked = Self::acked_seq(&conn)?;
            (acked, store::count_outbox_after(&conn, acked)?)
        };
        let mut total = waiting;
        let progress = |phase, report: &SyncReport, total| {
            sync::notify(
                observer,
                SyncProgress {
                    phase,
                    pushed: report.pushed,
                    total,
                    pulled: report.pulled,
                },
            )
        };
        if progress(SyncPhase::Preparing, &report, total).is_break() {
            report.cancelled = true;
            return self.finish(report);
        }
        let mut rewinds = 0;
        let mut adoptions = 0;
        let mut counter_resets = 0;
        let mut highest_acked = acked_at_start;
        loop {
            // (b) The next run of unacknowledged change sets.
            let (request, sent, cursor_before) = {
                let conn = lock(&self.conn);
                let acked = Self::acked_seq(&conn)?;
                let rows = store::outbox_from(&conn, acked + 1, sync::MAX_CHANGE_SETS_PER_REQUEST)?;
                let lengths: Vec<u64> = rows.iter().map(|r| r.byte_len).collect();
                let n = sync::take_for_request(
                    &lengths,
                    sync::MAX_CHANGE_SETS_PER_REQUEST,
                    sync::MAX_REQUEST_BYTES,
                );
                let mut change_sets = Vec::with_capacity(n);
                let mut sent = Vec::with_capacity(n);
                for row in rows.into_iter().take(n) {
                    let bytes = self.key.open(&outbox_aad(row.seq), &row.body_sealed)?;
                    sent.push((row.seq, row.hash, row.record_count));
                    change_sets.push(bytes.to_vec());
                }
                let evidence = self.evidence_for(&conn, &change_sets, &enrolled)?;
                drop(conn);
                // Read for every request: an adoption makes a new one.
                let lineage = self.lineage()?;
                let conn = lock(&self.conn);
                let adopted =
                    store::get_meta::<Vec<u8>>(&conn, meta::ADOPTED)?.and_then(|b| decode_position(&b));
                let cursor = store::get_meta::<i64>(&conn, meta::CURSOR)?.unwrap_or(0).max(0) as u64;
                drop(conn);
                let counter = self.next_request_counter()?;
                let request = SyncRequest {
                    device_id: enrolled.device_id,
                    counter,
                    cursor,
                    device_clock_ms: now_ms(),
                    change_sets,
                    evidence,
                    lineage,
                    adopted,
                }
                .seal(&enrolled.signing_key)?;
                (request, sent, cursor)
            };
            let phase = if sent.is_empty() {
                SyncPhase::Pulling
            } else {
                SyncPhase::Pushing
            };
            if progress(phase, &report, total).is_break() {
                report.cancelled = true;
                break;
            }
            report.requests += 1;
            let answer = match transport.sync(&request) {
                Err(Error::CounterBehind(last)) if counter_resets == 0 && last < MAX_ADOPTED_COUNTER => {
                    // The server saw a later counter: this store was
                    // restored from a backup (or someone replayed one of
                    // its requests, which changed nothing). Continue above
                    // it; the refused request changed nothing.
                    counter_resets += 1;
                    tracing::warn!(last, "the server's request counter is ahead; continuing above it");
                    self.raise_request_counter(last)?;
                    continue;
                }
                other => other?,
            };
            crate::fault::point("after_answer");
            // (c) Check the answer, then store it in one transaction.
            let resp = SyncResponse::open(&answer, &enrolled.server_key)?;
            if resp.request_hash != wire::request_hash(&request) {
                return Err(Error::Protocol("the answer is for another request".into()));
            }
            let sent_hashes: Vec<(u64, wire::Hash)> = sent.iter().map(|&(s, h, _)| (s, h)).collect();
            let (acked_before, next_seq) = {
                let conn = lock(&self.conn);
                (
                    Self::acked_seq(&conn)?,
                    store::get_meta::<i64>(&conn, meta::NEXT_SEQ)?.unwrap_or(1).max(1) as u64,
                )
            };
            let outcome = sync::interpret(&sent_hashes, acked_before, next_seq, &resp)?;
            let applied = self.store_answer(
                &resp,
                &outcome,
                acked_before,
                &enrolled.server_key,
                &enrolled.signing_key.verifying_key(),
            )?;
            for &(seq, _, records) in &sent {
                if outcome.acked.contains(&seq) && seq > highest_acked {
                    report.pushed += 1;
                    report.records_pushed += records;
                    highest_acked = seq;
                }
            }
            report.pulled += applied.updated;
            report.kidcs_received += applied.kidcs;
            if let Some(position) = outcome.adopt {
                adoptions += 1;
                if adoptions > 1 {
                    return Err(Error::Protocol(
                        "the server's chain position keeps moving away from this tablet's".into(),
                    ));
                }
                let records = self.adopt(position)?;
                tracing::warn!(
                    server_seq = position.seq,
                    records,
                    "this tablet's chain disagreed with the server's (a lost commit, or an old copy of the store): adopted the server's position; sending its records again"
                );
                report.adopted_server_seq = Some(position.seq);
                report.change_sets_created += self.fill_outbox(&enrolled)?;
                total = report.pushed + {
                    let conn = lock(&self.conn);
                    store::count_outbox_after(&conn, Self::acked_seq(&conn)?)?
                };
                highest_acked = position.seq;
                continue;
            }
            if let Some(from) = outcome.rewind_to {
                rewinds += 1;
                if rewinds > sync::MAX_REWINDS {
                    return Err(Error::Protocol(
                        "the server keeps asking for the same change sets".into(),
                    ));
                }
                tracing::warn!(from, "the server lost change sets; resending them");
                report.resent_from = Some(report.resent_from.map_or(from, |r: u64| r.min(from)));
                total += highest_acked.saturating_sub(from - 1);
                highest_acked = from - 1;
            }
            if let Some((code, message)) = outcome.refused {
                tracing::warn!(code = code.as_str(), "the server refused a change set");
                return Err(Error::ServerRefused { code, message });
            }
            if progress(SyncPhase::Pulling, &report, total).is_break() {
                report.cancelled = true;
                break;
            }
            let remaining = {
                let conn = lock(&self.conn);
                store::count_outbox_after(&conn, Self::acked_seq(&conn)?)?
            };
            let progressed = !outcome.acked.is_empty()
                || outcome.rewind_to.is_some()
                || !resp.updates.is_empty()
                || resp.cursor != cursor_before;
            if remaining == 0 && !resp.more {
                break;
            }
            if !progressed {
                return Err(Error::Protocol("the server's answer made no progress".into()));
            }
        }
        if !report.cancelled {
            let conn = &mut *lock(&self.conn);
            let tx = conn.transaction()?;
            store::set_meta(&tx, meta::LAST_SYNC_AT, now_ms())?;
            tx.commit()?;
            let _ = progress(SyncPhase::Done, &report, total);
        }
        self.finish(report)
    }

    /// Takes the next request counter, durably, before the request leaves:
    /// a request the server accepted is never followed by one with a
    /// counter at or below it, even after a crash.
    fn next_request_counter(&self) -> Result<u64> {
        let conn = &mut *lock(&self.conn);
        let tx = conn.transaction()?;
        let last = store::get_meta::<i64>(&tx, meta::REQUEST_COUNTER)?
            .unwrap_or(0)
            .max(0) as u64;
        let next = last + 1;
        store::set_meta(&tx, meta::REQUEST_COUNTER, next as i64)?;
        tx.commit()?;
        Ok(next)
    }

    /// Moves the request counter up to `last` (never down).
    fn raise_request_counter(&self, last: u64) -> Result<()> {
        let conn = &mut *lock(&self.conn);
        let tx = conn.transaction()?;
        let mine = store::get_meta::<i64>(&tx, meta::REQUEST_COUNTER)?
            .unwrap_or(0)
            .max(0) as u64;
        store::set_meta(&tx, meta::REQUEST_COUNTER, mine.max(last) as i64)?;
        tx.commit()?;
        Ok(())
    }

    fn finish(&self, mut report: SyncReport) -> Result<SyncReport> {
        let conn = lock(&self.conn);
        let acked = Self::acked_seq(&conn)?;
        report.pending = store::count_outbox_after(&conn, acked)?;
        report.records_pending = store::all_records(&conn)?
            .iter()
            .filter(|r| SyncState::of(r, acked) == SyncState::Pending)
            .count() as u64;
        Ok(report)
    }

    /// Batches every record's new local changes into signed change sets in
    /// the outbox, in one transaction. Returns how many were made.
    fn fill_outbox(&self, enrolled: &Enrolled) -> Result<u64> {
        let now = now_ms();
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        let dirty = store::dirty_records(&tx)?;
        if dirty.is_empty() {
            return Ok(0);
        }
        let mut changes = Vec::with_capacity(dirty.len());
        let mut rows = std::collections::HashMap::new();
        for mut row in dirty {
            let mut doc = self.load_doc(&row)?;
            let since = heads_from_bytes(&row.outboxed_heads)?;
            // Only this tablet's own changes: the server's came from it.
            let new_changes = doc.get_changes(&since);
            let first_time = since.is_empty() && new_changes.iter().all(|c| c.actor_id() == &self.actor);
            let mine: Vec<Vec<u8>> = if first_time && !new_changes.is_empty() {
                // A record the server has never seen travels as one
                // document chunk: its changes' dependencies become indices
                // instead of 32-byte hashes (see `record::decode_changes`).
                vec![doc.save_nocompress()]
            } else {
                new_changes
                    .into_iter()
                    .filter(|c| c.actor_id() == &self.actor)
                    .map(|c| c.raw_bytes().to_vec())
                    .collect()
            };
            row.outboxed_heads = heads_to_bytes(&doc.get_heads());
            row.dirty = false;
            if mine.is_empty() {
                store::update_record(&tx, &row)?;
                continue;
            }
            changes.push(RecordChanges {
                record_id: row.id,
                changes: mine,
            });
            rows.insert(row.id, row);
        }
        let mut chain = Chain {
            next_seq: store::get_meta::<i64>(&tx, meta::NEXT_SEQ)?.unwrap_or(1).max(1) as u64,
            last_hash: store::require_meta::<Vec<u8>>(&tx, meta::LAST_HASH)?
                .try_into()
                .map_err(|_| Error::Corrupt("the stored hash chain is malformed".into()))?,
        };
        let batches = sync::batch(
            changes,
            sync::MAX_RECORDS_PER_CHANGE_SET,
            sync::MAX_RAW_BYTES_PER_CHANGE_SET,
        );
        let members: Vec<Vec<[u8; 16]>> = batches
            .iter()
            .map(|b| b.iter().map(|r| r.record_id).collect())
            .collect();
        let signed = sync::seal_batches(
            &mut chain,
            &enrolled.signing_key,
            enrolled.device_id,
            now,
            batches,
        )?;
        let made = signed.len() as u64;
        for (cs, ids) in signed.into_iter().zip(members) {
            let seq = cs.seq();
            let hash = cs.hash();
            let bytes = cs.into_bytes();
            store::insert_outbox(
                &tx,
                &OutboxRow {
                    seq,
                    hash,
                    byte_len: bytes.len() as u64,
                    body_sealed: self.key.seal(&outbox_aad(seq), &bytes),
                    record_count: ids.len() as u64,
                    created_at: now,
                    acked_at: None,
                },
            )?;
            for id in ids {
                if let Some(mut row) = rows.remove(&id) {
                    row.last_outbox_seq = Some(seq);
                    store::update_record(&tx, &row)?;
                }
            }
        }
        store::set_meta(&tx, meta::NEXT_SEQ, chain.next_seq as i64)?;
        store::set_meta(&tx, meta::LAST_HASH, chain.last_hash.to_vec())?;
        crate::fault::point("before_outbox_commit");
        tx.commit()?;
        tracing::info!(change_sets = made, "change sets added to the outbox");
        Ok(made)
    }

    /// Stores an answer in one transaction: acknowledgements, a rewind,
    /// the server's updates and the new cursor.
    fn store_answer(
        &self,
        resp: &SyncResponse,
        outcome: &sync::Outcome,
        acked_before: u64,
        server_key: &VerifyingKey,
        own_key: &VerifyingKey,
    ) -> Result<Applied> {
        let now = now_ms();
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        let mut acked = acked_before;
        for &seq in &outcome.acked {
            store::mark_acked(&tx, seq, now)?;
            acked = acked.max(seq);
        }
        for &seq in &outcome.set_aside {
            // The records it carried are set aside: decoded from this
            // tablet's own copy of the change set.
            if let Some(row) = store::outbox_from(&tx, seq, 1)?
                .into_iter()
                .find(|r| r.seq == seq)
            {
                let bytes = self.key.open(&outbox_aad(seq), &row.body_sealed)?;
                let ids: Vec<[u8; 16]> = SignedChangeSet::from_bytes(bytes.to_vec())?
                    .open(own_key)
                    .map(|cs| cs.records.iter().map(|r| r.record_id).collect())
                    .unwrap_or_default();
                tracing::warn!(
                    seq,
                    records = ids.len(),
                    "the server set a change set aside; its records must be registered again"
                );
                store::mark_set_aside(&tx, &ids, now)?;
            }
        }
        if let Some(from) = outcome.rewind_to {
            store::unack_from(&tx, from)?;
            acked = from - 1;
        }
        store::set_meta(&tx, meta::ACKED_SEQ, acked as i64)?;
        let mut applied = Applied::default();
        for update in &resp.updates {
            self.apply_update(&tx, update, now, &mut applied)?;
        }
        self.keep_evidence(&tx, &resp.issuances, server_key)?;
        store::set_meta(&tx, meta::CURSOR, resp.cursor as i64)?;
        store::set_meta(&tx, meta::LAST_SERVER_TIME, resp.server_time_ms)?;
        if resp
            .refusal
            .as_ref()
            .is_none_or(|r| r.code != wire::RefusalCode::ClonedStore)
        {
            // The server took a request of this lineage: the adoption is done.
            store::set_meta(&tx, meta::ADOPTED, Vec::<u8>::new())?;
        }
        tx.commit()?;
        Ok(applied)
    }

    fn apply_update(
        &self,
        tx: &Transaction<'_>,
        update: &wire::RecordUpdate,
        now: i64,
        applied: &mut Applied,
    ) -> Result<()> {
        let id = RecordId(update.record_id);
        let Some(mut row) = store::get_record(tx, &update.record_id)? else {
            tracing::warn!(record = %id, "the server sent changes for a record this store does not have");
            return Ok(());
        };
        let mut doc = self.load_doc(&row)?;
        let before = doc.get_heads();
        let changes = update
            .changes
            .iter()
            .map(|c| Change::from_bytes(c.clone()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| Error::Protocol("the server sent an unreadable change".into()))?;
        doc.apply_changes(changes)
            .map_err(|_| Error::Protocol("the server sent a change that does not apply".into()))?;
        if doc.get_heads() == before {
            return Ok(());
        }
        if !doc.get_missing_deps(&[]).is_empty() {
            tracing::warn!(record = %id, "server changes wait for changes this store lacks");
        }
        let view = record::read(&doc)?;
        if let Some(kidc) = &view.server.kidc {
            if row.kidc_sealed.is_none() {
                applied.kidcs += 1;
            }
            row.kidc_sealed = Some(self.key.seal(&kidc_aad(&row.id), kidc.as_str().as_bytes()));
        }
        row.status = view.status()?.as_str().to_string();
        row.doc_sealed = self.key.seal(&doc_aad(&row.id), &doc.save());
        row.server_updated_at = Some(now);
        store::update_record(tx, &row)?;
        applied.updated += 1;
        Ok(())
    }
}

fn encode_position(p: &ChainPosition) -> Vec<u8> {
    let mut v = p.seq.to_be_bytes().to_vec();
    v.extend_from_slice(&p.hash);
    v
}

fn decode_position(b: &[u8]) -> Option<ChainPosition> {
    if b.len() != 40 {
        return None;
    }
    Some(ChainPosition {
        seq: u64::from_be_bytes(b[..8].try_into().ok()?),
        hash: b[8..].try_into().ok()?,
    })
}

impl Registrar {
    /// The store's lineage, made on first use.
    fn lineage(&self) -> Result<[u8; 16]> {
        let conn = &mut *lock(&self.conn);
        if let Some(l) = store::get_meta::<Vec<u8>>(conn, meta::LINEAGE)?
            && let Ok(l) = <[u8; 16]>::try_from(l.as_slice())
        {
            return Ok(l);
        }
        let lineage: [u8; 16] = rand::random();
        let tx = conn.transaction()?;
        store::set_meta(&tx, meta::LINEAGE, lineage.to_vec())?;
        tx.commit()?;
        Ok(lineage)
    }

    /// Adopts the server's chain position, in one transaction: the change
    /// sets after the last acknowledged one are dropped (the server never
    /// applied them as they are), their records are marked to be sent
    /// again in full (the server keeps what it already has), the chain
    /// continues from the server's position, and the store takes a new
    /// lineage. Returns how many records will be sent again.
    fn adopt(&self, position: ChainPosition) -> Result<u64> {
        let conn = &mut *lock(&self.conn);
        let tx = conn.transaction()?;
        let acked = Self::acked_seq(&tx)?;
        if position.seq < acked {
            return Err(Error::Protocol(
                "the server's chain is behind this tablet's and differs from it".into(),
            ));
        }
        let records = store::forget_unacknowledged(&tx, acked)?;
        let lineage: [u8; 16] = rand::random();
        store::set_meta(&tx, meta::ACKED_SEQ, position.seq as i64)?;
        store::set_meta(&tx, meta::NEXT_SEQ, position.seq as i64 + 1)?;
        store::set_meta(&tx, meta::LAST_HASH, position.hash.to_vec())?;
        store::set_meta(&tx, meta::LINEAGE, lineage.to_vec())?;
        store::set_meta(&tx, meta::ADOPTED, encode_position(&position))?;
        store::record_adoption(&tx, position.seq, &position.hash, now_ms())?;
        tx.commit()?;
        Ok(records)
    }

    /// The proofs of the KIdCs held by records of `change_sets` (this
    /// tablet's own, about to be sent): after a restore from backup the
    /// server records those codes again instead of drawing new ones.
    /// Nothing to decode while the tablet holds no proof at all.
    fn evidence_for(
        &self,
        conn: &Connection,
        change_sets: &[Vec<u8>],
        enrolled: &Enrolled,
    ) -> Result<Vec<IssuanceProof>> {
        if change_sets.is_empty() || store::count_evidence(conn)? == 0 {
            return Ok(Vec::new());
        }
        let own_key = enrolled.signing_key.verifying_key();
        let mut seen = std::collections::HashSet::new();
        let mut proofs = Vec::new();
        for bytes in change_sets {
            let cs = SignedChangeSet::from_bytes(bytes.clone())?.open(&own_key)?;
            for rc in cs.records {
                if !seen.insert(rc.record_id) {
                    continue;
                }
                if let Some(sealed) = store::get_evidence(conn, &rc.record_id)? {
                    let plain = self.key.open(&evidence_aad(&rc.record_id), &sealed)?;
                    let proof = IssuanceProof::from_bytes(&plain)
                        .ok_or_else(|| Error::Corrupt("a stored KIdC proof is malformed".into()))?;
                    proofs.push(proof);
                }
            }
        }
        Ok(proofs)
    }

    /// Keeps the server's proofs of codes this tablet's records hold: only
    /// proofs that verify with the pinned server key, for a record that
    /// holds exactly that code.
    fn keep_evidence(
        &self,
        tx: &Transaction<'_>,
        proofs: &[IssuanceProof],
        server_key: &VerifyingKey,
    ) -> Result<()> {
        for proof in proofs {
            let Ok(kidc) = proof.verify(server_key) else {
                tracing::warn!("the server sent a KIdC proof that does not verify; ignored");
                continue;
            };
            let Some(row) = store::get_record(tx, &proof.record_id)? else {
                continue;
            };
            let held = match &row.kidc_sealed {
                Some(sealed) => self.key.open(&kidc_aad(&row.id), sealed)?,
                None => continue,
            };
            if held.as_slice() != kidc.as_str().as_bytes() {
                tracing::warn!(record = %RecordId(row.id), "a KIdC proof names another code than the record holds; ignored");
                continue;
            }
            store::put_evidence(
                tx,
                &row.id,
                &self.key.seal(&evidence_aad(&row.id), &proof.to_bytes()),
            )?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Applied {
    updated: u64,
    kidcs: u64,
}

/// Formats device-clock milliseconds as RFC 3339 UTC (`2026-11-28T20:54:37Z`).
pub fn format_utc(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000) / 1000;
    let date = Date::from_unix_days(days).map_or_else(|| "0000-01-01".to_string(), |d| d.to_string());
    format!("{date}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

fn record_to_json(r: &Record) -> Json {
    let status = r.view.status().map(|s| s.as_str()).unwrap_or("invalid");
    let mut out = json!({
        "record_id": r.id.to_string(),
        "kind": r.view.kind.as_str(),
        "office": r.view.office,
        "status": status,
        "sync_state": r.sync_state.as_str(),
        "data": r.view.data,
        "transitions": r.view.transitions,
        "conflicts": r.view.conflicts,
        "server": r.view.server,
        "created_at": format_utc(r.created_at_ms),
        "updated_at": format_utc(r.updated_at_ms),
    });
    if let Some(k) = &r.view.server.kidc {
        out["kidc"] = json!(k.as_str());
    }
    if let Some(h) = &r.view.server.hold {
        out["hold"] = json!(h);
    }
    if let Some(t) = r.server_updated_at_ms {
        out["server_updated_at"] = json!(format_utc(t));
    }
    out
}

fn summary_to_json(s: &RecordSummary) -> Json {
    let mut out = json!({
        "record_id": s.id.to_string(),
        "kind": s.kind,
        "status": s.status,
        "sync_state": s.sync_state.as_str(),
        "created_at": format_utc(s.created_at_ms),
    });
    if let Some(k) = &s.kidc {
        out["kidc"] = json!(k);
    }
    if let Some(h) = &s.hold {
        out["hold"] = json!(h);
    }
    if let Some(t) = s.server_updated_at_ms {
        out["server_updated_at"] = json!(format_utc(t));
    }
    out
}
