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

use std::fmt;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version};
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::workflow::{self, Action};
use zeroize::Zeroizing;

use crate::Server;
use crate::error::ApiError;
use crate::storage::{StaffEvent, StaffMember, StaffPut, StaffPutOutcome, StaffRemoval};

/// The environment variable that carries a PIN to `crvs-server staff add`.
pub const PIN_ENV: &str = "CRVS_PIN";

/// A staff role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Registers: enters and submits records.
    Clerk,
    /// Verifies a record someone else entered.
    Verifier,
    /// Approves, rejects, unlocks.
    Registrar,
}

impl Role {
    /// Every role, in the order lists show them.
    pub const ALL: [Role; 3] = [Role::Clerk, Role::Verifier, Role::Registrar];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Clerk => "clerk",
            Role::Verifier => "verifier",
            Role::Registrar => "registrar",
        }
    }

    /// Parses a stable name (exactly, lower case).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The role a workflow step needs.
    pub fn for_action(action: Action) -> Role {
        match action {
            Action::Submit | Action::Resubmit => Role::Clerk,
            Action::Verify => Role::Verifier,
            Action::Approve | Action::Reject => Role::Registrar,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Clerk => 1,
            Role::Verifier => 2,
            Role::Registrar => 4,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Roles(u8);

/// Why a role list is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    /// No role named.
    #[error("name at least one role: clerk, verifier, registrar")]
    Empty,
    /// A name that is not a role.
    #[error("unknown role {0:?}: the roles are clerk, verifier, registrar")]
    Unknown(String),
}

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);

    /// The set of the given roles.
    pub fn of(roles: &[Role]) -> Roles {
        roles.iter().fold(Roles::NONE, |set, r| set.with(*r))
    }

    /// This set and `role`.
    #[must_use]
    pub fn with(self, role: Role) -> Roles {
        Roles(self.0 | role.bit())
    }

    /// Whether the set holds `role`.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles held, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The names of the roles held, in [`Role::ALL`] order.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Role::as_str).collect()
    }

    /// Parses an operator's list: role names separated by commas
    /// (`clerk,verifier`), any case, spaces around names ignored, a name
    /// given twice counted once. Refuses an empty list, an empty name and
    /// any name that is not a role.
    pub fn parse(list: &str) -> Result<Roles, RoleError> {
        if list.trim().is_empty() {
            return Err(RoleError::Empty);
        }
        let mut set = Roles::NONE;
        for name in list.split(',') {
            let name = name.trim();
            let role = Role::parse(&name.to_ascii_lowercase()).ok_or_else(|| {
                // Operator input, echoed back bounded: a role list is no
                // personal data.
                RoleError::Unknown(name.chars().take(32).collect())
            })?;
            set = set.with(role);
        }
        Ok(set)
    }

    /// The stored form: names in [`Role::ALL`] order, comma-separated
    /// (empty for no role).
    pub fn to_stored(self) -> String {
        self.names().join(",")
    }

    /// Parses [`Roles::to_stored`]'s form strictly (`None` for anything
    /// else).
    pub fn from_stored(s: &str) -> Option<Roles> {
        if s.is_empty() {
            return Some(Roles::NONE);
        }
        let mut set = Roles::NONE;
        for name in s.split(',') {
            set = set.with(Role::parse(name)?);
        }
        (set.to_stored() == s).then_some(set)
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_stored())
    }
}

impl std::str::FromStr for Roles {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Roles, RoleError> {
        Roles::parse(s)
    }
}

impl serde::Serialize for Roles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// A PIN, wiped from memory when dropped. Not `Clone`; its `Debug` shows
/// nothing.
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Takes `s` (its allocation, not a copy) into a zeroizing string.
    pub fn new(s: String) -> Pin {
        Pin(Zeroizing::new(s))
    }

    /// The PIN from [`PIN_ENV`], if set. A value that is not Unicode is
    /// refused as not digits.
    pub fn from_env() -> Result<Option<Pin>, PinPolicyError> {
        match std::env::var(PIN_ENV) {
            Ok(s) => Ok(Some(Pin::new(s))),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(os)) => {
                drop(Zeroizing::new(os.into_encoded_bytes()));
                Err(PinPolicyError::NotDigits)
            }
        }
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

/// Why a PIN is refused. Messages never repeat the PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinPolicyError {
    /// Something other than the digits 0 to 9.
    #[error("a PIN must be made of the digits 0 to 9 only")]
    NotDigits,
    /// Fewer than 6 or more than 12 digits.
    #[error("a PIN must be 6 to 12 digits long")]
    Length,
    /// One digit repeated.
    #[error("a PIN must not be one digit repeated")]
    Repeated,
    /// Each digit one more (or one less) than the one before, 9 and 0
    /// counting as neighbours.
    #[error("a PIN must not be a straight run of digits, counting up or down")]
    Run,
}

/// The shortest PIN, in digits.
pub const PIN_MIN_DIGITS: usize = 6;
/// The longest PIN, in digits.
pub const PIN_MAX_DIGITS: usize = 12;

/// Checks a PIN against the policy: 6 to 12 digits, not one digit
/// repeated, not a straight run (each digit one up, or each one down,
/// from the one before, wrapping from 9 to 0: `345678`, `876543`,
/// `890123`).
pub fn check_pin(pin: &Pin) -> Result<(), PinPolicyError> {
    let digits = pin.expose().as_bytes();
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(PinPolicyError::NotDigits);
    }
    if !(PIN_MIN_DIGITS..=PIN_MAX_DIGITS).contains(&digits.len()) {
        return Err(PinPolicyError::Length);
    }
    let steps = || digits.windows(2).map(|w| (10 + w[1] - w[0]) % 10);
    if steps().all(|d| d == 0) {
        return Err(PinPolicyError::Repeated);
    }
    if steps().all(|d| d == 1) || steps().all(|d| d == 9) {
        return Err(PinPolicyError::Run);
    }
    Ok(())
}

/// Argon2id cost parameters of a PIN hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinHashParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

/// The PIN hash's cost: 19 MiB, 2 passes, 1 lane (OWASP's minimum for
/// Argon2id). A tablet verifies a PIN each time a staff member acts, so
/// the cost aims at 100 to 250 ms there; low-end tablets are 3 to 5 times
/// slower than a current x86 core, and this setting takes about 35 ms on
/// one core of the development machine (median of 7 verifications, 33 to
/// 36 ms; the test `pin_hash_timing` in `server/tests/staff.rs` prints
/// it), so about 105 to 175 ms on a tablet. The passphrase that unlocks a tablet's store costs more
/// (64 MiB): it is typed once a session, a PIN at every step. The
/// parameters are inside each PHC string, so a later change applies to
/// new PINs and old ones still verify.
pub const PIN_HASH_PARAMS: PinHashParams = PinHashParams {
    m_cost: 19456,
    t_cost: 2,
    p_cost: 1,
};

/// The most memory a stored PIN hash may ask a verifier for: 256 MiB.
const MAX_VERIFY_M_COST: u32 = 256 * 1024;
/// The most passes a stored PIN hash may ask a verifier for.
const MAX_VERIFY_T_COST: u32 = 16;
/// The salt's length, in bytes.
const SALT_LEN: usize = 16;
/// The hash's length, in bytes.
const HASH_LEN: usize = 32;

/// A PIN hash that cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinHashError {
    /// The parameters are out of range.
    #[error("invalid PIN hash parameters: {0}")]
    Params(String),
    /// The stored string is not an Argon2id PHC string this code accepts.
    #[error("the stored PIN hash is not a supported Argon2id PHC string")]
    Format,
}

/// Argon2id of `pin` with our own working memory, wiped afterwards
/// (argon2's own allocation is freed without being wiped, and its blocks
/// hold values derived from the PIN).
fn argon2id(pin: &Pin, salt: &[u8], params: &Params, out: &mut [u8]) -> Result<(), PinHashError> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut blocks = Zeroizing::new(vec![Block::default(); params.block_count()]);
    argon
        .hash_password_into_with_memory(pin.expose().as_bytes(), salt, out, blocks.as_mut_slice())
        .map_err(|e| PinHashError::Params(e.to_string()))
}

/// Hashes a PIN with [`PIN_HASH_PARAMS`] and a fresh random salt into a
/// PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
pub fn hash_pin(pin: &Pin) -> Result<String, PinHashError> {
    hash_pin_with(pin, PIN_HASH_PARAMS)
}

/// [`hash_pin`] with other parameters (tests, benchmarks).
pub fn hash_pin_with(pin: &Pin, p: PinHashParams) -> Result<String, PinHashError> {
    let params = Params::new(p.m_cost, p.t_cost, p.p_cost, Some(HASH_LEN))
        .map_err(|e| PinHashError::Params(e.to_string()))?;
    let mut salt = [0u8; SALT_LEN];
    // `rand::rng()` is a CSPRNG seeded from the operating system.
    rand::Rng::fill_bytes(&mut rand::rng(), &mut salt);
    let mut out = Zeroizing::new([0u8; HASH_LEN]);
    argon2id(pin, &salt, &params, out.as_mut())?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| PinHashError::Params(e.to_string()))?,
        salt: Some(Salt::new(&salt).map_err(|e| PinHashError::Params(e.to_string()))?),
        hash: Some(Output::new(out.as_ref()).map_err(|e| PinHashError::Params(e.to_string()))?),
    };
    Ok(phc.to_string())
}

/// Whether `pin` matches a PHC string made by [`hash_pin`] (the same check
/// a tablet makes against its roster). The comparison is constant-time.
/// Parameters beyond 256 MiB or 16 passes are refused as
/// [`PinHashError::Format`]: a roster must not make a verifier run out of
/// memory.
pub fn verify_pin(pin: &Pin, phc: &str) -> Result<bool, PinHashError> {
    let parsed = PasswordHash::new(phc).map_err(|_| PinHashError::Format)?;
    if parsed.algorithm != ARGON2ID_IDENT || parsed.version != Some(Version::V0x13.into()) {
        return Err(PinHashError::Format);
    }
    let params = Params::try_from(&parsed).map_err(|_| PinHashError::Format)?;
    if params.m_cost() > MAX_VERIFY_M_COST || params.t_cost() > MAX_VERIFY_T_COST {
        return Err(PinHashError::Format);
    }
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Err(PinHashError::Format);
    };
    let mut out = Zeroizing::new(vec![0u8; expected.len()]);
    argon2id(pin, salt, &params, &mut out)?;
    let got = Output::new(&out).map_err(|_| PinHashError::Format)?;
    // `Output`'s equality is constant-time.
    Ok(&got == expected)
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
