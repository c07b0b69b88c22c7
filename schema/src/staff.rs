//! Staff roles and PINs, shared by the server (which sets the first PIN
//! and keeps the roster) and the tablet (which checks a PIN against the
//! roster offline before a staff member acts).
//!
//! **PINs are never stored in plain form.** A PIN is held in a zeroizing
//! [`Pin`], checked against the policy ([`check_pin`]: 6 to 12 digits,
//! not one digit repeated, not a straight run up or down), and only its
//! Argon2id PHC string ([`hash_pin`], a random 16-byte salt per entry) is
//! kept. Refusals never repeat the PIN.

use std::fmt;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version};
use zeroize::Zeroizing;

use crate::workflow::Action;
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
            Action::Approve | Action::Reject | Action::Settle => Role::Registrar,
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

impl Roles {
    /// The set as bits (clerk 1, verifier 2, registrar 4): its wire form.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set from [`Roles::bits`]; `None` when a bit names no role.
    pub fn from_bits(bits: u8) -> Option<Roles> {
        (bits & !7 == 0).then_some(Roles(bits))
    }
}

/// The most staff one office's roster may hold on the wire.
pub const MAX_ROSTER_MEMBERS: usize = 500;
/// The most rejection codes the server may send.
pub const MAX_REJECTION_CODES: usize = 100;

/// A staff member on an office's roster, as the server sends it to the
/// office's tablets.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct RosterMember {
    /// The staff id as the operator entered it.
    pub staff_id: String,
    /// The roles held ([`Roles::bits`]).
    pub roles: u8,
    /// The Argon2id PHC string of the PIN set centrally (never the PIN).
    pub pin_hash: String,
}

/// A reason a registrar may give for rejecting an application.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode, serde::Serialize)]
pub struct RejectionCode {
    /// The stable code, such as `documents_missing`.
    pub code: String,
    /// What it means, in English, for the tablet's list.
    pub label: String,
}

/// What the server tells each tablet of an office about it: who may act
/// and the rejection reasons. Sent with the enrolment (sealed with the
/// server's key, [`crate::wire::seal_directory`]) and with every sync
/// answer (format 5). The tablet keeps the latest one.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct OfficeDirectory {
    /// The office (commune code).
    pub office: String,
    /// The roster's version: the time of its last change, server ms (0
    /// for a roster never changed). The same roster gives the same
    /// directory, byte for byte.
    pub issued_at_ms: i64,
    /// Whether the office's roster is in force: true from the day the
    /// office's first staff member was added, for good (removing every
    /// member does not turn it off). While false, the office runs as a
    /// pilot: staff ids are names, and no PIN is asked.
    pub enforced: bool,
    /// The staff on the roster now (removed staff are not listed).
    pub staff: Vec<RosterMember>,
    /// The rejection reasons the registrar chooses from.
    pub rejection_codes: Vec<RejectionCode>,
}

impl OfficeDirectory {
    /// The member whose staff id compares equal to `staff_id`
    /// ([`crate::workflow::staff_id_key`]).
    pub fn member(&self, staff_id: &str) -> Option<&RosterMember> {
        let key = crate::workflow::staff_id_key(staff_id);
        self.staff
            .iter()
            .find(|m| crate::workflow::staff_id_key(&m.staff_id) == key)
    }

    /// Whether `code` is one of the rejection codes.
    pub fn has_rejection_code(&self, code: &str) -> bool {
        self.rejection_codes.iter().any(|c| c.code == code)
    }
}

/// The rejection reasons this build's server sends: the grounds on which
/// a civil registrar refuses an application as filed.
pub const REJECTION_CODES: &[(&str, &str)] = &[
    (
        "incomplete_application",
        "Required information is missing from the application",
    ),
    (
        "documents_missing",
        "A required supporting document was not presented",
    ),
    (
        "documents_inconsistent",
        "The details do not match the supporting documents",
    ),
    (
        "identity_not_established",
        "The identity of the declarant or of a person named could not be established",
    ),
    (
        "declarant_not_entitled",
        "The declarant is not entitled to declare this event",
    ),
    ("wrong_office", "The event is to be registered at another office"),
    (
        "duplicate_application",
        "The event is already registered or applied for",
    ),
    ("legal_impediment", "The law does not allow the event as declared"),
    ("other", "Another reason, given in the free text"),
];

/// [`REJECTION_CODES`] as the wire's list.
pub fn default_rejection_codes() -> Vec<RejectionCode> {
    REJECTION_CODES
        .iter()
        .map(|(code, label)| RejectionCode {
            code: (*code).to_string(),
            label: (*label).to_string(),
        })
        .collect()
}
