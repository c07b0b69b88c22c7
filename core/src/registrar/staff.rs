//! Staff who prove who they are, on the tablet.
//!
//! Several staff members share one tablet: the store's passphrase unlocks
//! the tablet, and each person who acts proves who they are with their own
//! PIN ([`Actor`]). The office's roster comes from the server, with the
//! enrolment and with every sync answer ([`OfficeDirectory`]: who is on it,
//! their roles, the Argon2id hash of the PIN set centrally, and the
//! rejection codes). It is kept sealed in `meta`; an older directory never
//! replaces a newer one.
//!
//! **Before each step** ([`Registrar::authorize`]), once the office's
//! roster is in force ([`OfficeDirectory::enforced`]: from the first staff
//! member the operators add, for good):
//! 1. the staff id must be on the roster the tablet last received, so a
//!    person added centrally acts after the tablet's next sync, and a
//!    removed one no longer can;
//! 2. they must hold the role the step needs ([`Role::for_action`]);
//! 3. they must not be locked: after [`MAX_PIN_TRIES`] wrong PINs in a row
//!    a person is locked on this tablet until a registrar unlocks them
//!    ([`Registrar::unlock_staff`]) or the operators set a new PIN
//!    centrally (a new hash on the roster clears the count);
//! 4. the PIN must match. A wrong one is counted in its own transaction
//!    before the error returns, so the count survives the refusal.
//!
//! While the roster is not in force (an office that has no staff on the
//! server yet: a pilot), staff ids are names and no PIN is asked, as
//! before. The server checks every step again against its own roster
//! history; the tablet's check is the first line, not the only one.
//!
//! **PINs never stored in plain form.** The tablet keeps hashes only: the
//! roster's, and a PIN a staff member changed on this tablet
//! ([`Registrar::set_staff_pin`]), hashed the same way. A PIN changed here
//! holds on this tablet until the operators set a new one centrally; it
//! does not travel to other tablets (decision, see ARCHITECTURE.md).
//!
//! **What a thief gets.** The roster and the counts are inside the
//! encrypted store, and every `meta` row carries a MAC (see
//! [`crate::integrity`]), so a count cannot be reset by editing the file,
//! nor put back from an older copy of one row. Someone holding the
//! passphrase who copies the roster's hashes out can try all 10⁶ six-digit
//! PINs offline in hours: the hash makes each guess cost memory, and the
//! server's re-check refuses steps by anyone removed centrally.

use std::collections::BTreeMap;

use crvs_schema::staff::{self, OfficeDirectory, Pin, Role, Roles};
use crvs_schema::workflow::staff_id_key;
use rusqlite::Connection;
use serde_json::{Value as Json, json};

use super::{Registrar, lock};
use crate::error::{Error, Result};
use crate::store::{self, meta};

/// Wrong PINs in a row after which a staff member is locked on a tablet.
pub const MAX_PIN_TRIES: u32 = 5;

pub(crate) const DIRECTORY_AAD: &[u8] = b"meta\0\0office_directory";
const PIN_STATE_AAD: &[u8] = b"meta\0\0staff_pin_state";

/// Who performs an action, and the PIN that proves it. A plain staff id
/// (`"clerk-01".into()`) carries no PIN: enough while the office's roster
/// is not in force. Its `Debug` never shows the PIN.
#[derive(Clone, Copy)]
pub struct Actor<'a> {
    id: &'a str,
    pin: Option<&'a str>,
}

impl<'a> Actor<'a> {
    /// `id`, proving who they are with `pin`.
    pub fn with_pin(id: &'a str, pin: &'a str) -> Actor<'a> {
        Actor { id, pin: Some(pin) }
    }

    /// `id`, with `pin` if there is one.
    pub fn new(id: &'a str, pin: Option<&'a str>) -> Actor<'a> {
        Actor { id, pin }
    }

    /// The staff id.
    pub fn id(&self) -> &'a str {
        self.id
    }
}

impl std::fmt::Debug for Actor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("id", &self.id)
            .field("pin", &self.pin.map(|_| ".."))
            .finish()
    }
}

impl<'a> From<&'a str> for Actor<'a> {
    fn from(id: &'a str) -> Actor<'a> {
        Actor { id, pin: None }
    }
}

impl<'a> From<&'a String> for Actor<'a> {
    fn from(id: &'a String) -> Actor<'a> {
        Actor { id, pin: None }
    }
}

/// Why a staff member may not act. Messages name staff ids and counts
/// only, never a PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StaffError {
    /// Not on the office's roster as this tablet last received it.
    #[error("staff {0} is not on this office's roster (as of this tablet's last sync)")]
    NotOnRoster(String),
    /// On the roster without the role the step needs.
    #[error("staff {staff} does not hold the {role} role")]
    MissingRole {
        /// The staff id.
        staff: String,
        /// The role the step needs.
        role: &'static str,
    },
    /// The roster is in force and no PIN was given.
    #[error("this office's roster is in force: staff {0} must give their PIN")]
    PinRequired(String),
    /// The PIN does not match.
    #[error("wrong PIN for staff {staff}: {tries_left} tries left before they are locked on this tablet")]
    WrongPin {
        /// The staff id.
        staff: String,
        /// Wrong PINs still allowed before the lock.
        tries_left: u32,
    },
    /// Locked after [`MAX_PIN_TRIES`] wrong PINs in a row.
    #[error("staff {0} is locked on this tablet after 5 wrong PINs in a row")]
    Locked(String),
    /// A new PIN that the policy refuses.
    #[error("the new PIN is refused: {0}")]
    WeakPin(staff::PinPolicyError),
}

impl StaffError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            StaffError::NotOnRoster(_) => "not_on_roster",
            StaffError::MissingRole { .. } => "role_missing",
            StaffError::PinRequired(_) => "pin_required",
            StaffError::WrongPin { .. } => "wrong_pin",
            StaffError::Locked(_) => "staff_locked",
            StaffError::WeakPin(_) => "weak_pin",
        }
    }

    /// What to do, in one sentence.
    pub fn hint(&self) -> &'static str {
        match self {
            StaffError::NotOnRoster(_) => {
                "Check the staff id; a person added centrally can act after this tablet's next sync."
            }
            StaffError::MissingRole { .. } => {
                "Ask a staff member who holds the role, or the operators to give it."
            }
            StaffError::PinRequired(_) => "Give the staff member's PIN (CRVS_PIN).",
            StaffError::WrongPin { .. } => "Nothing was stored. Check the PIN and try again.",
            StaffError::Locked(_) => {
                "Nothing was stored. A registrar unlocks them (`crvs staff unlock`), or the operators set a new PIN."
            }
            StaffError::WeakPin(_) => "Choose 6 to 12 digits, not one digit repeated, not a run.",
        }
    }
}

/// The tablet's own state per staff member: wrong PINs counted, and a PIN
/// changed on this tablet.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct PinState {
    members: BTreeMap<String, MemberState>,
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct MemberState {
    /// Wrong PINs in a row.
    failures: u32,
    /// The roster hash the failures were counted against: a new PIN set
    /// centrally starts the count again.
    counted_against: String,
    /// A PIN changed on this tablet: its hash, and the roster hash it
    /// replaced (a new central PIN wins over it).
    local: Option<LocalPin>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LocalPin {
    base: String,
    hash: String,
}

impl MemberState {
    fn failures_against(&self, roster_hash: &str) -> u32 {
        if self.counted_against == roster_hash {
            self.failures
        } else {
            0
        }
    }

    fn effective_hash<'a>(&'a self, roster_hash: &'a str) -> &'a str {
        match &self.local {
            Some(l) if l.base == roster_hash => &l.hash,
            _ => roster_hash,
        }
    }
}

fn member_roles(m: &staff::RosterMember) -> Roles {
    Roles::from_bits(m.roles).unwrap_or(Roles::NONE)
}

impl Registrar {
    /// The office directory the tablet last received, if any.
    pub(crate) fn directory_in(&self, conn: &Connection) -> Result<Option<OfficeDirectory>> {
        let Some(sealed) = store::get_meta::<Vec<u8>>(conn, meta::DIRECTORY)? else {
            return Ok(None);
        };
        let bytes = self.key.open(DIRECTORY_AAD, &sealed)?;
        let (d, _) = bincode::decode_from_slice(&bytes, bincode::config::standard())
            .map_err(|_| Error::Corrupt("the stored office directory is malformed".into()))?;
        Ok(Some(d))
    }

    /// Keeps `d` as the office's directory. Another office's is not kept
    /// (the server moved the device: its answer says so in its own way),
    /// and the rest of the answer still applies. Each one comes in an answer bound to this tablet's own
    /// request (the sync answer's request hash, the enrolment's nonce),
    /// so it is the server's roster as of now, never a replayed older one:
    /// it replaces the one kept, even after a restore took the server's
    /// roster back.
    pub(crate) fn keep_directory(&self, tx: &rusqlite::Transaction<'_>, d: &OfficeDirectory) -> Result<()> {
        if d.office != self.office {
            tracing::warn!("the server sent the roster of another office: not kept");
            return Ok(());
        }
        let bytes = bincode::encode_to_vec(d, bincode::config::standard())
            .map_err(|e| Error::Storage(e.to_string()))?;
        store::set_meta(tx, meta::DIRECTORY, self.key.seal(DIRECTORY_AAD, &bytes))?;
        Ok(())
    }

    fn pin_state(&self, conn: &Connection) -> Result<PinState> {
        let Some(sealed) = store::get_meta::<Vec<u8>>(conn, meta::PIN_STATE)? else {
            return Ok(PinState::default());
        };
        let bytes = self.key.open(PIN_STATE_AAD, &sealed)?;
        serde_json::from_slice(&bytes).map_err(|_| Error::Corrupt("the stored PIN state is malformed".into()))
    }

    fn save_pin_state(&self, conn: &mut Connection, state: &PinState) -> Result<()> {
        let bytes = serde_json::to_vec(state).map_err(|e| Error::Storage(e.to_string()))?;
        let tx = conn.transaction()?;
        store::set_meta(&tx, meta::PIN_STATE, self.key.seal(PIN_STATE_AAD, &bytes))?;
        tx.commit()?;
        Ok(())
    }

    /// Checks that `actor` may take a step that needs `role` (see the
    /// module documentation). Returns the roster member's staff id as the
    /// roster spells it, or the actor's id while the roster is not in
    /// force. A wrong PIN is counted (and kept) before the error returns.
    pub(crate) fn authorize(&self, actor: Actor<'_>, role: Option<Role>) -> Result<String> {
        let mut conn = lock(&self.conn);
        let Some(dir) = self.directory_in(&conn)?.filter(|d| d.enforced) else {
            return Ok(actor.id.trim().to_string());
        };
        let id = actor.id.trim();
        let member = dir
            .member(id)
            .ok_or_else(|| Error::Staff(StaffError::NotOnRoster(id.to_string())))?;
        if let Some(role) = role
            && !member_roles(member).contains(role)
        {
            return Err(Error::Staff(StaffError::MissingRole {
                staff: id.to_string(),
                role: role.as_str(),
            }));
        }
        let key = staff_id_key(id);
        let mut state = self.pin_state(&conn)?;
        let entry = state.members.get(&key).cloned().unwrap_or_default();
        let failures = entry.failures_against(&member.pin_hash);
        if failures >= MAX_PIN_TRIES {
            return Err(Error::Staff(StaffError::Locked(id.to_string())));
        }
        let Some(pin) = actor.pin else {
            return Err(Error::Staff(StaffError::PinRequired(id.to_string())));
        };
        let pin = Pin::new(pin.to_string());
        let ok = staff::verify_pin(&pin, entry.effective_hash(&member.pin_hash))
            .map_err(|e| Error::Corrupt(format!("the roster's PIN hash for staff {id}: {e}")))?;
        if ok {
            if failures > 0 {
                let e = state.members.entry(key).or_default();
                e.failures = 0;
                self.save_pin_state(&mut conn, &state)?;
            }
            return Ok(member.staff_id.clone());
        }
        let e = state.members.entry(key).or_default();
        e.failures = failures + 1;
        e.counted_against = member.pin_hash.clone();
        let now = e.failures;
        self.save_pin_state(&mut conn, &state)?;
        tracing::warn!(failures = now, "wrong PIN given for a staff member");
        if now >= MAX_PIN_TRIES {
            Err(Error::Staff(StaffError::Locked(id.to_string())))
        } else {
            Err(Error::Staff(StaffError::WrongPin {
                staff: id.to_string(),
                tries_left: MAX_PIN_TRIES - now,
            }))
        }
    }

    /// Unlocks `staff_id` on this tablet after wrong PINs, by the
    /// registrar `by` (who proves who they are with their own PIN).
    pub fn unlock_staff<'a>(&self, staff_id: &str, by: impl Into<Actor<'a>>) -> Result<()> {
        let by = by.into();
        let conn_dir = self.directory_in(&lock(&self.conn))?;
        let Some(dir) = conn_dir.filter(|d| d.enforced) else {
            return Err(Error::NotAllowed(
                "this office's roster is not in force: there is no PIN to unlock".into(),
            ));
        };
        let id = staff_id.trim();
        let member = dir
            .member(id)
            .ok_or_else(|| Error::Staff(StaffError::NotOnRoster(id.to_string())))?;
        self.authorize(by, Some(Role::Registrar))?;
        let mut conn = lock(&self.conn);
        let mut state = self.pin_state(&conn)?;
        if let Some(e) = state.members.get_mut(&staff_id_key(&member.staff_id)) {
            e.failures = 0;
            self.save_pin_state(&mut conn, &state)?;
        }
        tracing::info!("staff member unlocked on this tablet");
        Ok(())
    }

    /// Changes `staff_id`'s PIN on this tablet: `old_pin` proves who they
    /// are, `new_pin` must pass the policy. Only its hash is kept.
    pub fn set_staff_pin(&self, staff_id: &str, old_pin: &str, new_pin: &str) -> Result<()> {
        let dir = self.directory_in(&lock(&self.conn))?;
        let Some(dir) = dir.filter(|d| d.enforced) else {
            return Err(Error::NotAllowed(
                "this office's roster is not in force: staff have no PIN yet".into(),
            ));
        };
        let id = staff_id.trim();
        let member = dir
            .member(id)
            .ok_or_else(|| Error::Staff(StaffError::NotOnRoster(id.to_string())))?
            .clone();
        let new_pin = Pin::new(new_pin.to_string());
        staff::check_pin(&new_pin).map_err(|e| Error::Staff(StaffError::WeakPin(e)))?;
        self.authorize(Actor::with_pin(id, old_pin), None)?;
        let hash = staff::hash_pin(&new_pin).map_err(|e| Error::Storage(e.to_string()))?;
        let mut conn = lock(&self.conn);
        let mut state = self.pin_state(&conn)?;
        let e = state.members.entry(staff_id_key(&member.staff_id)).or_default();
        e.local = Some(LocalPin {
            base: member.pin_hash.clone(),
            hash,
        });
        e.failures = 0;
        self.save_pin_state(&mut conn, &state)?;
        tracing::info!("staff PIN changed on this tablet");
        Ok(())
    }

    /// The rejection codes to choose from: the server's list, or this
    /// build's before the first sync that brought one.
    pub fn rejection_codes(&self) -> Result<Vec<staff::RejectionCode>> {
        Ok(self
            .directory_in(&lock(&self.conn))?
            .map(|d| d.rejection_codes)
            .filter(|c| !c.is_empty())
            .unwrap_or_else(staff::default_rejection_codes))
    }

    /// The roster as this tablet holds it: `{"office", "enforced",
    /// "roster_version_ms", "staff":[{"staff_id","roles","locked",
    /// "wrong_pins"}], "rejection_codes":[{"code","label"}]}`. No hashes.
    pub fn roster_json(&self) -> Result<Json> {
        let conn = lock(&self.conn);
        let dir = self.directory_in(&conn)?;
        let state = self.pin_state(&conn)?;
        let staff: Vec<Json> = dir
            .iter()
            .flat_map(|d| d.staff.iter())
            .map(|m| {
                let failures = state
                    .members
                    .get(&staff_id_key(&m.staff_id))
                    .map_or(0, |e| e.failures_against(&m.pin_hash));
                json!({
                    "staff_id": m.staff_id,
                    "roles": member_roles(m).names(),
                    "locked": failures >= MAX_PIN_TRIES,
                    "wrong_pins": failures,
                })
            })
            .collect();
        drop(conn);
        Ok(json!({
            "office": self.office,
            "enforced": dir.as_ref().is_some_and(|d| d.enforced),
            "roster_version_ms": dir.as_ref().map(|d| d.issued_at_ms),
            "staff": staff,
            "rejection_codes": self.rejection_codes()?,
        }))
    }
}
