//! `crvs-mobile`: the uniffi facade over [`crvs_core`] for Kotlin (Android),
//! Swift (iOS) and Python.
//!
//! **API boundary:** this crate is the only one that knows about uniffi,
//! and the only FFI boundary of the tablet engine. It converts types and
//! errors and holds no logic: every method is one call into
//! [`crvs_core::Registrar`]. Errors cross as [`CrvsError`], which carries
//! no personal data.
//!
//! The API mirrors the registrar CLI `crvs`: [`Registrar::init`] /
//! [`Registrar::open`], `change_passphrase`, `enroll`, `register_birth`, `verify`, `approve`,
//! `reject`, `record_json` (the JSON of `crvs show`), `list_json` and the
//! async `sync`, which reports to a foreign [`SyncProgress`].
//!
//! Every method but `sync` blocks (opening a store runs Argon2id, about
//! half a second; `enroll` is one HTTP round trip): call them off the UI
//! thread. `sync` runs the core's blocking sync on a thread of its own and
//! needs no async runtime on the Rust side.
//!
//! Passphrases arrive as `String`s. uniffi lifts a `String` argument from
//! the buffer the foreign side filled without copying it, and each method
//! moves it at once into a zeroizing [`crvs_core::Passphrase`], so that
//! buffer is wiped when the call returns and the core holds no other copy.
//! The foreign side's own copies (the JVM or Swift string, the UTF-8 bytes
//! it encoded before the call) are outside Rust's reach: the app should
//! keep the passphrase no longer than it needs it.

use std::sync::Arc;

use crvs_core::RecordId;

mod error;
mod sync;

pub use error::{CrvsError, FieldProblem};
pub use sync::{SyncPhase, SyncProgress, SyncReport, SyncStep};

uniffi::setup_scaffolding!();

/// Where a record stands in the workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum RecordStatus {
    /// Entered by a clerk, waiting for a second staff member.
    Submitted,
    /// Checked by a second staff member, waiting for the registrar.
    Verified,
    /// Approved on the tablet; the server has not yet registered it.
    Approved,
    /// Rejected, with a reason.
    Rejected,
    /// Approved and registered by the server (a birth has its KIdC).
    Registered,
    /// Held by the server for review.
    Held,
}

impl From<crvs_core::Status> for RecordStatus {
    fn from(s: crvs_core::Status) -> Self {
        use crvs_core::Status as S;
        match s {
            S::Submitted => RecordStatus::Submitted,
            S::Verified => RecordStatus::Verified,
            S::Approved => RecordStatus::Approved,
            S::Rejected => RecordStatus::Rejected,
            S::Registered => RecordStatus::Registered,
            S::Held => RecordStatus::Held,
        }
    }
}

/// What enrolment gave the tablet.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Enrollment {
    /// The device id the server assigned.
    pub device_id: String,
    /// The office (6-digit commune code) the device may write.
    pub office: String,
}

impl From<crvs_core::Enrollment> for Enrollment {
    fn from(e: crvs_core::Enrollment) -> Self {
        Enrollment {
            device_id: e.device_id,
            office: e.office,
        }
    }
}

/// What `repair` did: rows rebuilt from the store's sealed data, and rows
/// only an enrolment can set (then enrol the tablet again).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RepairReport {
    /// Rows rebuilt or reset, by table and id or key.
    pub repaired: Vec<String>,
    /// Rows that cannot be rebuilt; `check` still names them.
    pub unrecoverable: Vec<String>,
}

/// An open, encrypted tablet store. Safe to share between threads.
#[derive(Debug, uniffi::Object)]
pub struct Registrar {
    // In an Arc so that `sync` can hand it to its thread.
    core: Arc<crvs_core::Registrar>,
}

impl Registrar {
    fn wrap(core: crvs_core::Result<crvs_core::Registrar>) -> Result<Arc<Registrar>, CrvsError> {
        Ok(Arc::new(Registrar {
            core: Arc::new(core?),
        }))
    }
}

/// The acting staff member, with their PIN if given. (The PIN string
/// crosses the FFI boundary as the caller's; it is not copied here.)
fn actor<'a>(by: &'a str, pin: &'a Option<String>) -> crvs_core::Actor<'a> {
    crvs_core::Actor::new(by, pin.as_deref())
}

fn record_id(id: &str) -> Result<RecordId, CrvsError> {
    Ok(RecordId::parse(id)?)
}

#[uniffi::export]
impl Registrar {
    /// Creates a new store in `store_dir` for the office `commune` (a
    /// 6-digit commune code), protected by `passphrase`.
    /// `WeakPassphrase` if the passphrase is too easy to guess (its reason
    /// is for the user; it never repeats the passphrase);
    /// `AlreadyInitialized` if the folder holds a store.
    #[uniffi::constructor]
    pub fn init(store_dir: String, passphrase: String, commune: String) -> Result<Arc<Registrar>, CrvsError> {
        let passphrase = crvs_core::Passphrase::new(passphrase);
        Registrar::wrap(crvs_core::Registrar::init(store_dir, &passphrase, &commune))
    }

    /// Opens the store in `store_dir`. `WrongPassphrase` changes nothing;
    /// `NotInitialized` if there is no store. A store whose key derivation
    /// is cheaper than this build's is re-wrapped on the way (once).
    #[uniffi::constructor]
    pub fn open(store_dir: String, passphrase: String) -> Result<Arc<Registrar>, CrvsError> {
        let passphrase = crvs_core::Passphrase::new(passphrase);
        Registrar::wrap(crvs_core::Registrar::open(store_dir, &passphrase))
    }

    /// Changes the store's passphrase from `old` to `new`: afterwards only
    /// `new` opens the store. `WrongPassphrase` if `old` is not the
    /// current passphrase, `WeakPassphrase` if `new` is too easy to guess,
    /// `InvalidInput` if they are the same; nothing changes then.
    pub fn change_passphrase(&self, old: String, new: String) -> Result<(), CrvsError> {
        let old = crvs_core::Passphrase::new(old);
        let new = crvs_core::Passphrase::new(new);
        Ok(self.core.change_passphrase(&old, &new)?)
    }

    /// Enrols this tablet with the server at `server_url` using a one-time
    /// enrolment `token`; returns the device id the server assigned.
    /// `ca_pem` is the CA certificate (PEM text) from the sync operators
    /// when the server's certificate is not from a public web authority
    /// (null/None otherwise); it is stored and trusted for every sync.
    /// `InvalidInput` if it is not a PEM certificate (nothing stored);
    /// `Certificate` if the server's certificate is not trusted (the token
    /// is not used up).
    pub fn enroll(
        &self,
        server_url: String,
        token: String,
        ca_pem: Option<String>,
    ) -> Result<Enrollment, CrvsError> {
        Ok(self.core.enroll(&server_url, &token, ca_pem.as_deref())?.into())
    }

    /// Registers a birth from its JSON (the same as `crvs birth register`
    /// reads), entered by staff member `by`; returns the new record id.
    /// `InvalidRecord` lists every bad field and stores nothing.
    pub fn register_birth(
        &self,
        registration_json: String,
        by: String,
        pin: Option<String>,
    ) -> Result<String, CrvsError> {
        Ok(self
            .core
            .register_birth(&registration_json, actor(&by, &pin))?
            .to_string())
    }

    /// Registers any vital event but an amendment from its JSON (its
    /// `"event"` names it: `death`, `marriage`, `divorce`, `adoption`, or
    /// none for a birth), entered by staff member `by`; returns the new
    /// record id. `InvalidRecord` lists every bad field and stores nothing.
    pub fn register_event(
        &self,
        registration_json: String,
        by: String,
        pin: Option<String>,
    ) -> Result<String, CrvsError> {
        Ok(self
            .core
            .register_event(&registration_json, actor(&by, &pin), None)?
            .to_string())
    }

    /// Amends the approved or registered birth record `id` with the
    /// amendment JSON (`changes`, `reason`, `remarks`), entered by staff
    /// member `by`; returns the amendment's own record id, which is
    /// verified and approved like any record. `InvalidRecord` when the
    /// amendment or the birth as amended is invalid, `NotAllowed` before
    /// the birth is approved.
    pub fn amend(
        &self,
        id: String,
        amendment_json: String,
        by: String,
        pin: Option<String>,
    ) -> Result<String, CrvsError> {
        Ok(self
            .core
            .amend(&record_id(&id)?, &amendment_json, actor(&by, &pin))?
            .to_string())
    }

    /// Corrects the rejected record `id` with new data (the whole
    /// registration) and resubmits it, by staff member `by`; it keeps its
    /// id and history. `NotAllowed` unless the record is rejected.
    pub fn correct(
        &self,
        id: String,
        registration_json: String,
        by: String,
        pin: Option<String>,
    ) -> Result<RecordStatus, CrvsError> {
        Ok(self
            .core
            .correct(&record_id(&id)?, &registration_json, actor(&by, &pin))?
            .into())
    }

    /// Records that `by` verified the record. `NotAllowed` if `by` is the
    /// clerk who entered it.
    pub fn verify(&self, id: String, by: String, pin: Option<String>) -> Result<RecordStatus, CrvsError> {
        Ok(self.core.verify(&record_id(&id)?, actor(&by, &pin))?.into())
    }

    /// Records that `by` approved the (verified) record.
    pub fn approve(&self, id: String, by: String, pin: Option<String>) -> Result<RecordStatus, CrvsError> {
        Ok(self.core.approve(&record_id(&id)?, actor(&by, &pin))?.into())
    }

    /// Records that `by` rejected the record with the reason code `code`
    /// (one of `rejection_codes_json`) and the free text `reason`
    /// (required).
    pub fn reject(
        &self,
        id: String,
        by: String,
        pin: Option<String>,
        code: String,
        reason: String,
    ) -> Result<RecordStatus, CrvsError> {
        Ok(self
            .core
            .reject_with_code(&record_id(&id)?, actor(&by, &pin), &code, &reason)?
            .into())
    }

    /// Settles a record two tablets of the office wrote at once, by the
    /// registrar `by`: keeps the value numbered `take` of the record's
    /// `conflicting_data` (`record_json`), or, when `take` is null, the
    /// whole registration `registration_json`. The record is then
    /// verified and approved again. `NotAllowed` when there is nothing to
    /// settle.
    pub fn settle(
        &self,
        id: String,
        take: Option<u32>,
        registration_json: Option<String>,
        by: String,
        pin: Option<String>,
    ) -> Result<RecordStatus, CrvsError> {
        let choice = match (take, &registration_json) {
            (Some(i), _) => crvs_core::registrar::Settlement::Take(i as usize),
            (None, Some(json)) => crvs_core::registrar::Settlement::Data(json),
            (None, None) => {
                return Err(CrvsError::InvalidInput {
                    reason: "give take or registration_json".into(),
                });
            }
        };
        Ok(self
            .core
            .settle(&record_id(&id)?, choice, actor(&by, &pin))?
            .into())
    }

    /// The office's roster as this tablet holds it, as JSON (`crvs staff
    /// list --json`): `enforced`, `staff` (ids, roles, `locked`), and the
    /// `rejection_codes` to choose from. No PIN hashes.
    pub fn roster_json(&self) -> Result<String, CrvsError> {
        Ok(self.core.roster_json()?.to_string())
    }

    /// Changes `staff_id`'s PIN on this tablet (`old_pin` proves who they
    /// are). `Staff { code: "weak_pin" }` if the new one is refused.
    pub fn set_staff_pin(&self, staff_id: String, old_pin: String, new_pin: String) -> Result<(), CrvsError> {
        let old = zeroize::Zeroizing::new(old_pin);
        let new = zeroize::Zeroizing::new(new_pin);
        Ok(self.core.set_staff_pin(&staff_id, &old, &new)?)
    }

    /// Unlocks `staff_id` on this tablet after wrong PINs, by the
    /// registrar `by` with their PIN.
    pub fn unlock_staff(&self, staff_id: String, by: String, pin: Option<String>) -> Result<(), CrvsError> {
        Ok(self.core.unlock_staff(&staff_id, actor(&by, &pin))?)
    }

    /// The record as JSON, exactly as `crvs show --json` prints it:
    /// `record_id`, `status`, `sync_state`, `kidc` (once assigned),
    /// `data`, `transitions`, `server`, ...
    pub fn record_json(&self, id: String) -> Result<String, CrvsError> {
        Ok(self.core.record_json(&record_id(&id)?)?)
    }

    /// Checks the whole store as `crvs check` does and returns how many
    /// records it holds. `Tampered` names the rows changed outside the app.
    pub fn check(&self) -> Result<u64, CrvsError> {
        Ok(self.core.check()? as u64)
    }

    /// Rebuilds the rows `check` names from the store's sealed data, as
    /// `crvs repair --by STAFF` does (for the district office).
    pub fn repair(&self, by: String) -> Result<RepairReport, CrvsError> {
        let r = self.core.repair(&by)?;
        Ok(RepairReport {
            repaired: r.repaired,
            unrecoverable: r.unrecoverable,
        })
    }

    /// Every record without personal data, as `crvs list --json` prints
    /// it: `{"records": [{record_id, kind, status, sync_state, kidc?, ...}]}`.
    pub fn list_json(&self) -> Result<String, CrvsError> {
        Ok(self.core.list_json()?)
    }

    /// Pushes the pending change sets to the enrolled server and pulls
    /// its answers (KIdCs), reporting each step to `progress`. Safe to cut
    /// at any point and to repeat. Runs on a background thread.
    pub async fn sync(&self, progress: Arc<dyn SyncProgress>) -> Result<SyncReport, CrvsError> {
        let core = Arc::clone(&self.core);
        sync::on_thread(move || {
            let observer = sync::Observer::new(progress);
            let result = core.sync(&observer);
            observer.outcome(result)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "a long passphrase the registrar chose";
    const NEW: &str = "rice fields after the monsoon rains";

    fn store_dir(dir: &tempfile::TempDir) -> String {
        dir.path().join("store").display().to_string()
    }

    #[test]
    fn init_refuses_a_weak_passphrase_across_the_boundary_without_repeating_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Registrar::init(store_dir(&dir), "letmein123".into(), "171003".into()).unwrap_err();
        let CrvsError::WeakPassphrase { reason } = &err else {
            panic!("expected WeakPassphrase, got {err:?}");
        };
        assert!(!reason.is_empty());
        assert!(!err.to_string().contains("letmein123"));
        assert!(matches!(
            Registrar::open(store_dir(&dir), OLD.into()),
            Err(CrvsError::NotInitialized)
        ));
    }

    #[test]
    fn a_changed_passphrase_opens_the_store_and_the_old_one_no_longer_does() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registrar::init(store_dir(&dir), OLD.into(), "171003".into()).unwrap();
        assert_eq!(
            r.change_passphrase("not the passphrase".into(), NEW.into()),
            Err(CrvsError::WrongPassphrase)
        );
        assert!(matches!(
            r.change_passphrase(OLD.into(), "letmein123".into()),
            Err(CrvsError::WeakPassphrase { .. })
        ));
        r.change_passphrase(OLD.into(), NEW.into()).unwrap();
        drop(r);
        assert!(matches!(
            Registrar::open(store_dir(&dir), OLD.into()),
            Err(CrvsError::WrongPassphrase)
        ));
        let r = Registrar::open(store_dir(&dir), NEW.into()).unwrap();
        assert_eq!(r.list_json().unwrap(), r#"{"records":[]}"#);
    }
}
