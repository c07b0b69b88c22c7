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
//!
//! The record types and their JSON live in `records`; the sync (outbox,
//! push, answers, adoption, evidence) in `crate::sync`.

mod events;
mod repair;
mod staff;
pub use events::Settlement;
pub use repair::RepairReport;
pub use staff::{Actor, MAX_PIN_TRIES, StaffError};

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use automerge::{ActorId, AutoCommit, ChangeHash};
use crvs_schema::enrol::{self, EnrolmentToken};
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::record;
use crvs_schema::wire::SignedChangeSet;
use crvs_schema::workflow::{self, Action, Transition};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::Rng;
use rusqlite::Connection;
use serde_json::{Value as Json, json};
use zeroize::Zeroizing;

use crate::crypto::{DataKey, KdfParams, Passphrase, WrappedKey, aad};
use crate::error::{Error, Result};
use crate::integrity;
use crate::store::{self, RecordRow, meta};
use crate::transport::{HttpTransport, Transport};

mod records;

pub use records::{Record, RecordId, RecordSummary, SyncState, format_utc};
pub(crate) use records::{record_to_json, summary_to_json};

/// What enrolment gave the tablet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The device id the server assigned.
    pub device_id: String,
    /// The office the device may write.
    pub office: String,
}

pub(crate) struct Enrolled {
    pub(crate) device_id: [u8; 16],
    pub(crate) server_url: String,
    pub(crate) server_ca: Option<String>,
    pub(crate) server_key: VerifyingKey,
    pub(crate) signing_key: SigningKey,
}

/// An open tablet store.
pub struct Registrar {
    pub(crate) dir: PathBuf,
    pub(crate) conn: Mutex<Connection>,
    pub(crate) key: DataKey,
    pub(crate) actor: ActorId,
    pub(crate) office: String,
    /// The Argon2id setting this build asks for: the store's is raised to
    /// it on unlock, and a passphrase change never goes below it.
    pub(crate) kdf: KdfParams,
    pub(crate) sync_lock: Mutex<()>,
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
pub(crate) fn uuid_v7_at(unix_ms: i64) -> uuid::Uuid {
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    uuid::Builder::from_unix_timestamp_millis(unix_ms.max(0) as u64, &random).into_uuid()
}

const WRAP_AAD: &[u8] = b"meta\0\0wrapped_data_key";
const SIGNING_KEY_AAD: &[u8] = b"meta\0\0signing_key";
pub(crate) const NOTIFICATIONS_AAD: &[u8] = b"meta\0\0pending_notifications";
const PENDING_SIGNING_KEY_AAD: &[u8] = b"meta\0\0pending_signing_key";

pub(crate) fn doc_aad(id: &[u8; 16]) -> Vec<u8> {
    aad("records", id, "doc")
}

pub(crate) fn kidc_aad(id: &[u8; 16]) -> Vec<u8> {
    aad("records", id, "kidc")
}

pub(crate) fn evidence_aad(id: &[u8; 16]) -> Vec<u8> {
    aad("kidc_evidence", id, "proof")
}

pub(crate) fn outbox_aad(seq: u64) -> Vec<u8> {
    aad("outbox", &seq.to_be_bytes(), "body")
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock rolled back its transaction (rusqlite
    // rolls back on drop), so the connection is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn heads_to_bytes(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

pub(crate) fn heads_from_bytes(bytes: &[u8]) -> Result<Vec<ChangeHash>> {
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
        let key = DataKey::generate();
        let wrapped = key.wrap(passphrase, kdf, WRAP_AAD)?;
        let mut conn = store::open(dir, true)?;
        crate::integrity::register(&conn, &key)?;
        store::migrate(&mut conn)?;
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
        // `store::open` checked that the schema is exactly ours, before
        // the key is registered: a trigger slipped into the file would run
        // with it.
        crate::integrity::register(&conn, &key)?;
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
        // The office's roster, sealed with the same key: from now on staff
        // prove who they are before the first sync.
        let directory = match &answer.directory {
            Some(sealed) => Some(
                hex::decode(sealed)
                    .ok()
                    .and_then(|b| crvs_schema::wire::open_directory(&b, &server_key).ok())
                    .ok_or_else(|| {
                        Error::Protocol(
                            "the office roster in the enrolment answer does not verify; nothing was stored: enrol again"
                                .into(),
                        )
                    })?,
            ),
            None => None,
        };
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
        if let Some(d) = &directory {
            self.keep_directory(&tx, d)?;
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

    pub(crate) fn enrolled(&self, conn: &Connection) -> Result<Enrolled> {
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

    pub(crate) fn load_doc(&self, row: &RecordRow) -> Result<AutoCommit> {
        let bytes = self.key.open(&doc_aad(&row.id), &row.doc_sealed)?;
        Ok(AutoCommit::load(&bytes)?.with_actor(self.actor.clone()))
    }

    /// A record's document, sealed for its row. Stored uncompressed
    /// (`save_nocompress`): deflate costs more than a merge, loading
    /// inflates it again, and a record never sent is then stored exactly
    /// as it travels, so a sync sends its bytes without loading it
    /// (`outgoing`). Stores made before keep their deflated documents;
    /// both load.
    pub(crate) fn seal_doc(&self, id: &[u8; 16], doc: &mut AutoCommit) -> Vec<u8> {
        self.key.seal(&doc_aad(id), &doc.save_nocompress())
    }

    /// Registers a birth from its JSON (see the fixtures), entered by the
    /// staff member `by`. An invalid registration gives
    /// [`Error::InvalidRecord`] naming every bad field, and stores nothing;
    /// it is checked at this store's office (`validate_at_office`: the
    /// residence lies in its commune unless the registration says the
    /// family registers away from home). A device clock that is not set
    /// gives [`Error::Clock`].
    pub fn register_birth<'a>(&self, json: &str, by: impl Into<Actor<'a>>) -> Result<RecordId> {
        self.register_event(json, by, Some(crvs_schema::event::EventKind::Birth))
    }

    /// Records that `by` verified the record (a different staff member from
    /// the one who entered it).
    pub fn verify<'a>(&self, id: &RecordId, by: impl Into<Actor<'a>>) -> Result<workflow::Status> {
        self.transition(id, Action::Verify, by.into(), None, None)
    }

    /// Records that `by` approved the (verified) record.
    pub fn approve<'a>(&self, id: &RecordId, by: impl Into<Actor<'a>>) -> Result<workflow::Status> {
        self.transition(id, Action::Approve, by.into(), None, None)
    }

    /// Records that `by` rejected the record, for `reason` (required),
    /// without a reason code (see [`Registrar::reject_with_code`]).
    pub fn reject<'a>(
        &self,
        id: &RecordId,
        by: impl Into<Actor<'a>>,
        reason: &str,
    ) -> Result<workflow::Status> {
        self.transition(id, Action::Reject, by.into(), Some(reason), None)
    }

    /// Records that `by` rejected the record with the reason code `code`,
    /// one of [`Registrar::rejection_codes`] (the server's list), and the
    /// free text `reason` (required).
    pub fn reject_with_code<'a>(
        &self,
        id: &RecordId,
        by: impl Into<Actor<'a>>,
        code: &str,
        reason: &str,
    ) -> Result<workflow::Status> {
        let code = code.trim();
        if !self.rejection_codes()?.iter().any(|c| c.code == code) {
            return Err(Error::InvalidInput(
                "unknown rejection code: `crvs staff list --json` shows the server's list".into(),
            ));
        }
        self.transition(id, Action::Reject, by.into(), Some(reason), Some(code))
    }

    fn transition(
        &self,
        id: &RecordId,
        action: Action,
        by: Actor<'_>,
        reason: Option<&str>,
        code: Option<&str>,
    ) -> Result<workflow::Status> {
        let now = checked_now_ms()?;
        // The step's shape first (a missing reason), then who takes it.
        if action == Action::Reject && reason.is_none_or(|r| r.trim().is_empty()) {
            return Err(workflow::WorkflowError::MissingReason.into());
        }
        let by = self.authorize(by, Some(crvs_schema::staff::Role::for_action(action)))?;
        let status = self.write_step(
            id,
            action,
            by,
            now,
            reason.map(|r| r.trim().to_string()),
            code.map(str::to_string),
            None,
        )?;
        tracing::info!(record = %id, action = action.as_str(), "workflow step recorded");
        Ok(status)
    }

    /// Appends the step `action` by the authorized staff member `by` to
    /// record `id`, with new `data` for a step that writes it (a
    /// correction, a settlement), in one store transaction, and marks the
    /// record to send. Answers the record's status: for a step that writes
    /// data, the status the step gives (the record starts again; a hold
    /// the server's part still shows is lifted by the server), otherwise
    /// the status the record now reads.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_step(
        &self,
        id: &RecordId,
        action: workflow::Action,
        by: String,
        now: i64,
        reason: Option<String>,
        code: Option<String>,
        data: Option<&serde_json::Value>,
    ) -> Result<workflow::Status> {
        let mut conn = lock(&self.conn);
        let device = self.device_label(&conn)?;
        let tx = conn.transaction()?;
        let mut row = store::get_record(&tx, &id.0)?.ok_or(Error::NotFound)?;
        let mut doc = self.load_doc(&row)?;
        let view = record::read(&doc)?;
        let t = Transition {
            action,
            by,
            at_ms: now,
            device,
            reason,
            notification: None,
            code,
        };
        let stepped = workflow::check_append(&view.transitions, &t)?;
        if let Some(data) = data {
            record::set_data(&mut doc, data)?;
        }
        record::append_transition(&mut doc, &t)?;
        let status = match data {
            Some(_) => stepped,
            None => record::read(&doc)?.status()?,
        };
        row.status = status.as_str().to_string();
        row.updated_at = now;
        row.dirty = true;
        row.doc_sealed = self.seal_doc(&id.0, &mut doc);
        store::update_record(&tx, &row)?;
        tx.commit()?;
        Ok(status)
    }

    pub(crate) fn acked_seq(conn: &Connection) -> Result<u64> {
        Ok(store::get_meta::<i64>(conn, meta::ACKED_SEQ)?.unwrap_or(0).max(0) as u64)
    }

    /// Reads and decrypts one record.
    pub fn record(&self, id: &RecordId) -> Result<Record> {
        let conn = lock(&self.conn);
        integrity::ensure_intact(&conn, integrity::Scope::Record(&id.0))?;
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
        let record = self.record(id)?;
        let mut out = record_to_json(&record);
        if !record.view.conflicts.is_empty() {
            // What two tablets wrote at once, for a registrar to settle
            // (`settle --take N` numbers them from 0).
            let doc = {
                let conn = lock(&self.conn);
                let row = store::get_record(&conn, &id.0)?.ok_or(Error::NotFound)?;
                self.load_doc(&row)?
            };
            out["conflicting_data"] = Json::Array(record::data_values(&doc)?);
        }
        Ok(out.to_string())
    }

    /// Every record, without personal data, oldest first.
    pub fn list(&self) -> Result<Vec<RecordSummary>> {
        let conn = lock(&self.conn);
        integrity::ensure_intact(&conn, integrity::Scope::All)?;
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
        // Every row's MAC, the sum of them, and the schema.
        integrity::check_schema(&conn, store::MIGRATIONS, store::user_version(&conn)?)?;
        let mut bad = integrity::tampered_rows(&conn, integrity::Scope::All)?;
        // Every record's plaintext columns against its sealed document
        // (catches what was changed before the store had row MACs).
        let rows = store::all_records(&conn)?;
        for row in &rows {
            for why in self.disagreements_with_document(row)? {
                bad.push(format!("records {} ({why})", RecordId(row.id)));
            }
        }
        if !bad.is_empty() {
            bad.dedup();
            return Err(Error::Tampered(bad));
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
}
