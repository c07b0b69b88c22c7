//! The staff roster of each office (today a commune), the staff's roles,
//! and their PINs.
//!
//! Several staff members share one tablet; each person who acts proves
//! who they are with their own PIN. The roster comes from the server:
//! operators add and remove staff with `crvs-server staff add|remove`
//! ([`prepare_add`], [`add`], [`remove`], [`list`]); every change is kept
//! in the append-only staff history, from which the server answers "was
//! this person on this office's roster at that time, and with which roles"
//! ([`crate::storage::Storage::staff_role_at`]).
//!
//! Roles ([`Role`], [`Roles`]): a *clerk* registers (submits), a
//! *verifier* verifies, a *registrar* approves, rejects and unlocks
//! ([`Role::for_action`]). One person may hold several roles.
//!
//! **PINs are never stored in plain form.** The first PIN is set centrally
//! from the environment variable `CRVS_PIN` (never the command line, which
//! other users of the machine can read); it is held in a zeroizing [`Pin`],
//! checked against the policy ([`check_pin`]: 6 to 12 digits, not one digit
//! repeated, not a straight run up or down), and only its Argon2id PHC
//! string ([`hash_pin`], a random 16-byte salt per entry) reaches the
//! roster. Refusals never repeat the PIN.
//!
//! **What the hash is worth.** The roster, hashes included, travels to the
//! tablets, which check a PIN against it offline. The hash's cost
//! ([`PIN_HASH_PARAMS`]) is set so that a low-end tablet verifies a PIN in
//! about 100 to 250 ms; a 6-digit PIN has only 10^6 values, so someone who
//! copies a roster out of a tablet's unlocked store can try them all in
//! hours on one core. The hash keeps PINs out of plain sight (backups,
//! logs, a glance at the database) and makes each guess cost memory; the
//! main defence against guessing is the tablet's lockout after five wrong
//! PINs, and the roster is kept inside the tablet's encrypted store.

use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::workflow;

use crate::Server;
use crate::error::ApiError;
use crate::storage::{StaffEvent, StaffMember, StaffPut, StaffPutOutcome, StaffRemoval};

pub use crvs_schema::staff::{
    PIN_ENV, PIN_HASH_PARAMS, PIN_MAX_DIGITS, PIN_MIN_DIGITS, Pin, PinHashError, PinHashParams,
    PinPolicyError, Role, RoleError, Roles, check_pin, hash_pin, hash_pin_with, verify_pin,
};

/// What the server tells the office's tablets about it
/// ([`crvs_schema::staff::OfficeDirectory`]): the staff on its roster now,
/// with their roles and PIN hashes, and the rejection codes. The roster is
/// in force once anyone was ever added to it (a removed member is still a
/// row), so removing everyone does not turn PINs off.
pub fn directory(
    storage: &dyn crate::storage::Storage,
    office: &str,
) -> Result<crvs_schema::staff::OfficeDirectory, crate::storage::StorageError> {
    let roster = storage.roster(office)?;
    let enforced = !roster.is_empty();
    let version = roster
        .iter()
        .map(|m| m.updated_at_ms.max(m.removed_at_ms.unwrap_or(0)))
        .max()
        .unwrap_or(0);
    let staff = roster
        .into_iter()
        .filter(StaffMember::is_active)
        .filter_map(|m| {
            Some(crvs_schema::staff::RosterMember {
                staff_id: m.staff_id,
                roles: m.roles.bits(),
                pin_hash: m.pin_hash?,
            })
        })
        .take(crvs_schema::staff::MAX_ROSTER_MEMBERS)
        .collect();
    Ok(crvs_schema::staff::OfficeDirectory {
        office: office.to_string(),
        issued_at_ms: version,
        enforced,
        staff,
        rejection_codes: crvs_schema::staff::default_rejection_codes(),
    })
}

/// An office's staff history in memory, loaded once per sync request:
/// ingest checks every new workflow step against it (who, with which
/// role, at the step's time) without a query per step.
#[derive(Debug, Clone, Default)]
pub struct RosterHistory {
    entries: Vec<crate::storage::StaffHistoryEntry>,
}

impl RosterHistory {
    /// The office's history, read from storage.
    pub fn load(
        storage: &dyn crate::storage::Storage,
        office: &str,
    ) -> Result<Self, crate::storage::StorageError> {
        Ok(RosterHistory {
            entries: storage.staff_history(office)?,
        })
    }

    /// Whether the roster is in force: someone was ever put on it.
    pub fn in_force(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The roles `staff_id` held at `at_ms`, as
    /// [`crate::storage::Storage::staff_role_at`] answers: the person's
    /// last entry at or before that time; `None` if there is none or it is
    /// a removal.
    pub fn role_at(&self, staff_id: &str, at_ms: i64) -> Option<Roles> {
        let key = crate::storage::staff_key(staff_id);
        let last = self
            .entries
            .iter()
            .rfind(|e| e.staff_key == key && e.at_ms <= at_ms)?;
        (last.event != StaffEvent::Removed).then_some(last.roles)
    }

    /// Whether the workflow step `t` was taken by someone on the roster at
    /// its time, holding the role its action needs, and (for a rejection)
    /// with a code of the server's list.
    pub fn authorizes(&self, t: &crvs_schema::workflow::Transition) -> bool {
        let role_ok = self
            .role_at(&t.by, t.at_ms)
            .is_some_and(|r| r.contains(Role::for_action(t.action)));
        let code_ok = t
            .code
            .as_deref()
            .is_none_or(|c| crvs_schema::staff::REJECTION_CODES.iter().any(|(k, _)| *k == c));
        role_ok && code_ok
    }
}

/// The operator's name for the history when `--by` is not given: the
/// operating-system user (`USER`, `LOGNAME` or `USERNAME`, else on Unix
/// the name of the effective user id), if it is a valid operator id.
pub fn default_operator() -> Option<String> {
    ["USER", "LOGNAME", "USERNAME"]
        .into_iter()
        .filter_map(|v| std::env::var(v).ok())
        .chain(os_user_name())
        .find(|u| crate::admin::check_operator(u).is_ok())
}

/// The name of the effective user id, from the password database.
#[cfg(unix)]
fn os_user_name() -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: `passwd` is plain data that `getpwuid_r` fills in; its
    // string pointers point into `buf`, which outlives their use here,
    // and `buf.len()` is the buffer's true length.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(pwd.pw_name)
            .to_str()
            .ok()
            .map(str::to_string)
    }
}

#[cfg(not(unix))]
fn os_user_name() -> Option<String> {
    None
}

/// Checks a `--commune` argument: a 6-digit commune code of the
/// gazetteer. Returns the code.
pub fn check_commune(code: &str) -> Result<String, ApiError> {
    commune(code)
}

fn commune(code: &str) -> Result<String, ApiError> {
    GazetteerCode::parse_level(code.trim(), Level::Commune)
        .map(|c| c.as_str().to_string())
        .map_err(|e| ApiError::Invalid(format!("--commune must be a 6-digit commune code: {e}")))
}

fn staff_id(id: &str) -> Result<&str, ApiError> {
    let id = id.trim();
    workflow::check_staff_id(id).map_err(|e| ApiError::Invalid(format!("--id: {e}")))?;
    Ok(id)
}

fn operator(by: Option<&str>) -> Result<String, ApiError> {
    match by {
        Some(by) => {
            crate::admin::check_operator(by)?;
            Ok(by.to_string())
        }
        None => default_operator().ok_or_else(|| {
            ApiError::Invalid(
                "give --by OPERATOR: the operating-system user is unknown or not a valid operator id".into(),
            )
        }),
    }
}

/// A checked `staff add`: everything validated and the PIN hashed, before
/// the database is opened.
#[derive(Debug, Clone)]
pub struct StaffAddition {
    commune: String,
    staff_id: String,
    roles: Roles,
    pin_hash: Option<String>,
    by: String,
}

/// Checks a `staff add` (commune code, staff id, roles, operator, the PIN
/// against the policy) and hashes the PIN. The PIN is needed to put a
/// person on the roster; for a person already on it, it replaces their PIN.
pub fn prepare_add(
    commune_code: &str,
    id: &str,
    roles: &str,
    pin: Option<&Pin>,
    by: Option<&str>,
) -> Result<StaffAddition, ApiError> {
    let commune = commune(commune_code)?;
    let staff_id = staff_id(id)?.to_string();
    let roles = Roles::parse(roles).map_err(|e| ApiError::Invalid(format!("--role: {e}")))?;
    let by = operator(by)?;
    let pin_hash = match pin {
        Some(pin) => {
            check_pin(pin).map_err(|e| ApiError::Invalid(format!("{PIN_ENV} refused: {e}")))?;
            Some(hash_pin(pin).map_err(|e| ApiError::Internal(e.to_string()))?)
        }
        None => None,
    };
    Ok(StaffAddition {
        commune,
        staff_id,
        roles,
        pin_hash,
        by,
    })
}

/// A roster entry as `crvs-server staff list` shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StaffView {
    /// The staff id, as first entered.
    pub id: String,
    /// The roles held (none once removed).
    pub roles: Roles,
    /// When the person was (last) put on the roster, ms since the epoch.
    pub added_at: i64,
    /// When the person was removed, if they were.
    pub removed_at: Option<i64>,
}

impl From<&StaffMember> for StaffView {
    fn from(m: &StaffMember) -> Self {
        StaffView {
            id: m.staff_id.clone(),
            roles: m.roles,
            added_at: m.added_at_ms,
            removed_at: m.removed_at_ms,
        }
    }
}

/// What `staff add` or `staff remove` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StaffChange {
    /// The commune.
    pub commune: String,
    /// The roster entry as it now stands.
    #[serde(flatten)]
    pub staff: StaffView,
    /// The history entries written, in order (none: nothing changed).
    pub changes: Vec<StaffEvent>,
}

/// Adds a staff member to a commune's roster, or updates one on it (their
/// roles; their PIN if one was given). Every change is in the history.
pub fn add(server: &Server, a: &StaffAddition) -> Result<StaffChange, ApiError> {
    let mut tx = server.storage().begin()?;
    let outcome = tx.put_staff(&StaffPut {
        office: &a.commune,
        staff_id: &a.staff_id,
        roles: a.roles,
        pin_hash: a.pin_hash.as_deref(),
        by: &a.by,
        at_ms: server.now_ms(),
    })?;
    let StaffPutOutcome::Done { member, events } = outcome else {
        return Err(ApiError::Invalid(format!(
            "{} is not on the roster of commune {}: set {PIN_ENV} to their first PIN \
             ({PIN_MIN_DIGITS} to {PIN_MAX_DIGITS} digits) to add them",
            a.staff_id, a.commune
        )));
    };
    tx.commit()?;
    tracing::info!(office = %a.commune, changes = events.len(), "staff roster changed");
    Ok(StaffChange {
        commune: a.commune.clone(),
        staff: StaffView::from(&member),
        changes: events,
    })
}

/// Takes a staff member off a commune's roster: from the tablets' next
/// sync on they cannot act; their PIN hash is dropped. The removal is
/// recorded in the ledger ([`crate::ledger`]), synced, before the database
/// commits it, so a restore from an older backup does not put them back.
pub fn remove(
    server: &Server,
    commune_code: &str,
    id: &str,
    by: Option<&str>,
) -> Result<StaffChange, ApiError> {
    let commune = commune(commune_code)?;
    let id = staff_id(id)?;
    let by = operator(by)?;
    let mut tx = server.storage().begin()?;
    let member = tx
        .remove_staff(&commune, id, &by, server.now_ms())?
        .ok_or_else(|| ApiError::NoSuchStaff {
            office: commune.clone(),
            staff_id: id.to_string(),
        })?;
    // Outside the database first: a restore never puts them back.
    server.ledger().record_staff_removals(&[StaffRemoval {
        office: member.office.clone(),
        staff_key: member.staff_key.clone(),
        removed_at_ms: member.removed_at_ms.unwrap_or(member.updated_at_ms),
        by: by.clone(),
    }])?;
    tx.commit()?;
    tracing::info!(office = %commune, "staff member removed from the roster");
    Ok(StaffChange {
        commune,
        staff: StaffView::from(&member),
        changes: vec![StaffEvent::Removed],
    })
}

/// A commune's roster, current and removed members, by staff id.
pub fn list(server: &Server, commune_code: &str) -> Result<Vec<StaffView>, ApiError> {
    let commune = commune(commune_code)?;
    Ok(server
        .storage()
        .roster(&commune)?
        .iter()
        .map(StaffView::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crvs_schema::workflow::Action;

    fn pin(s: &str) -> Pin {
        Pin::new(s.to_string())
    }

    #[test]
    fn roles_parse_in_any_order_and_case_and_refuse_unknown_names() {
        let r = Roles::parse(" Registrar, clerk ,clerk").unwrap();
        assert_eq!(r.names(), ["clerk", "registrar"]);
        assert!(r.contains(Role::Clerk) && !r.contains(Role::Verifier));
        assert_eq!(
            Roles::parse("clerk,janitor"),
            Err(RoleError::Unknown("janitor".into()))
        );
        assert_eq!(
            Roles::parse("clerk,,verifier"),
            Err(RoleError::Unknown(String::new()))
        );
        assert_eq!(Roles::parse("  "), Err(RoleError::Empty));
    }

    #[test]
    fn the_stored_form_of_roles_reads_back_and_nothing_else_does() {
        for r in [
            Roles::NONE,
            Roles::of(&[Role::Verifier]),
            Roles::of(&Role::ALL),
            Roles::of(&[Role::Registrar, Role::Clerk]),
        ] {
            assert_eq!(Roles::from_stored(&r.to_stored()), Some(r));
        }
        assert_eq!(Roles::from_stored("registrar,clerk"), None);
        assert_eq!(Roles::from_stored("Clerk"), None);
        assert_eq!(Roles::from_stored("clerk,clerk"), None);
    }

    #[test]
    fn each_workflow_step_needs_its_role() {
        assert_eq!(Role::for_action(Action::Submit), Role::Clerk);
        assert_eq!(Role::for_action(Action::Verify), Role::Verifier);
        assert_eq!(Role::for_action(Action::Approve), Role::Registrar);
        assert_eq!(Role::for_action(Action::Reject), Role::Registrar);
    }

    #[test]
    fn the_pin_policy_refuses_short_long_repeated_runs_and_non_digits() {
        for (p, want) in [
            ("12345", PinPolicyError::Length),
            ("1234567890123", PinPolicyError::Length),
            ("", PinPolicyError::Length),
            ("12345a", PinPolicyError::NotDigits),
            ("１２３４５６", PinPolicyError::NotDigits),
            ("12 456", PinPolicyError::NotDigits),
            ("000000", PinPolicyError::Repeated),
            ("777777777", PinPolicyError::Repeated),
            ("123456", PinPolicyError::Run),
            ("654321", PinPolicyError::Run),
            ("890123", PinPolicyError::Run),
            ("0123456789", PinPolicyError::Run),
        ] {
            assert_eq!(check_pin(&pin(p)), Err(want), "{p:?}");
            assert!(!want.to_string().contains(p) || p.is_empty());
        }
        for p in ["480172", "135790", "112233", "123457", "000000000001", "909090"] {
            assert_eq!(check_pin(&pin(p)), Ok(()), "{p:?}");
        }
    }

    #[test]
    fn a_pin_hash_is_argon2id_salted_and_verifies_only_its_pin() {
        let cheap = PinHashParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let a = hash_pin_with(&pin("480172"), cheap).unwrap();
        let b = hash_pin_with(&pin("480172"), cheap).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "a fresh salt per hash");
        assert!(!a.contains("480172"));
        assert_eq!(verify_pin(&pin("480172"), &a), Ok(true));
        assert_eq!(verify_pin(&pin("480173"), &a), Ok(false));
        assert_eq!(verify_pin(&pin("480172"), "480172"), Err(PinHashError::Format));
        let greedy = a.replace("m=64", "m=4194304");
        assert_eq!(verify_pin(&pin("480172"), &greedy), Err(PinHashError::Format));
    }

    #[test]
    fn a_pin_debug_shows_nothing() {
        assert_eq!(format!("{:?}", pin("480172")), "Pin(..)");
    }
}
