//! Value encryption for the tablet store.
//!
//! * A random 256-bit [`DataKey`] seals every value that holds personal data
//!   with XChaCha20-Poly1305: [`DataKey::seal`] gives
//!   `[version 1][24-byte nonce][ciphertext + 16-byte tag]`. The associated
//!   data names the value's row (for example `records\0<id>\0doc`, see
//!   [`aad`]), so a ciphertext copied into another row does not open.
//! * The data key is wrapped (sealed) by a key derived with Argon2id from the
//!   registrar's passphrase ([`KdfParams`], stored beside the salt so the
//!   cost can change; the registrar re-wraps a store whose stored cost is
//!   below the build's on its next unlock). A wrong passphrase fails to
//!   unwrap it: [`CryptoError::WrongPassphrase`].
//! * A [`Passphrase`] lives in a zeroizing `String` from where it enters
//!   (the environment variable, the FFI call) to Argon2id; a new one must
//!   pass [`check_strength`] (zxcvbn score at least
//!   [`MIN_PASSPHRASE_SCORE`]).
//! * A separate lookup key, derived from the data key, gives keyed hashes
//!   of normalized tokens ([`DataKey::lookup_hash`]) for future searches by
//!   name without storing names.
//!
//! Every key and passphrase is zeroized on drop, and so is Argon2id's
//! working memory.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// The version byte in front of every sealed value.
pub const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Length of a KDF salt.
pub const SALT_LEN: usize = 16;

/// Why a value could not be sealed or opened. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The passphrase does not unwrap the data key.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// A sealed value does not open: damaged, or moved from another row.
    #[error("a sealed value does not open (damaged, or moved from another row)")]
    Tampered,
    /// A sealed value has a version this build does not know.
    #[error("a sealed value has the unknown version {0}")]
    UnknownVersion(u8),
    /// The KDF parameters are unusable.
    #[error("invalid key derivation parameters: {0}")]
    BadParams(String),
}

/// Argon2id cost parameters, stored beside the salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// The production setting: 64 MiB, 2 passes, 1 lane (a tablet's
    /// Argon2id runs on one core). About 0.14 s on one core of the x86
    /// development machine (median; 0.13 s at best), 3.8 times the previous
    /// setting's 37 ms (`cargo bench -p crvs-core --bench kdf`), so 0.4 to
    /// 0.7 s on a low-end Android tablet, which is 3 to 5 times slower:
    /// the half second a tablet can afford. A third pass (RFC 9106's 64 MiB
    /// recommendation) measured 0.19 to 0.24 s here, 0.6 to 1.2 s there. Memory is what a
    /// guessing attacker pays for per parallel guess, so it got the larger
    /// share; 64 MiB is little to a tablet with 2 GB. Raising it later
    /// re-wraps every store on its next unlock
    /// ([`KdfParams::is_weaker_than`]).
    pub const PRODUCTION: KdfParams = KdfParams {
        m_cost: 65536,
        t_cost: 2,
        p_cost: 1,
    };

    /// The production setting until December 2026 (OWASP's minimum: 19 MiB,
    /// 2 passes, 1 lane). Stores made with it are re-wrapped with
    /// [`KdfParams::PRODUCTION`] on their next unlock.
    pub const BEFORE_2026_12: KdfParams = KdfParams {
        m_cost: 19456,
        t_cost: 2,
        p_cost: 1,
    };

    /// A deliberately weak setting that makes tests fast. Never use it for
    /// a real store: it offers no protection against guessing.
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams {
        m_cost: 64,
        t_cost: 1,
        p_cost: 1,
    };

    /// The most memory a stored setting may ask for: 1 GiB.
    pub const MAX_M_COST: u32 = 1 << 20;
    /// The most passes a stored setting may ask for.
    pub const MAX_T_COST: u32 = 64;

    /// Whether `other` costs more in memory or passes and less in neither:
    /// a store wrapped with `self` should be re-wrapped with `other`. The
    /// lane count alone never makes a setting weaker or stronger.
    pub fn is_weaker_than(&self, other: &KdfParams) -> bool {
        self.m_cost <= other.m_cost
            && self.t_cost <= other.t_cost
            && (self.m_cost < other.m_cost || self.t_cost < other.t_cost)
    }

    /// The stronger of a store's setting and the build's: `target` when
    /// `self` is weaker than it, `self` otherwise (never lower a store).
    pub fn at_least(self, target: KdfParams) -> KdfParams {
        if self.is_weaker_than(&target) {
            target
        } else {
            self
        }
    }

    /// The stored form, `argon2id;m=65536;t=2;p=1`.
    pub fn encode(&self) -> String {
        format!("argon2id;m={};t={};p={}", self.m_cost, self.t_cost, self.p_cost)
    }

    /// Parses [`KdfParams::encode`]'s form.
    pub fn decode(s: &str) -> Result<KdfParams, CryptoError> {
        let bad = || CryptoError::BadParams("unrecognised parameter string".into());
        let mut parts = s.split(';');
        if parts.next() != Some("argon2id") {
            return Err(bad());
        }
        let mut field = |name: &str| -> Result<u32, CryptoError> {
            let p = parts.next().ok_or_else(bad)?;
            let v = p
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
                .ok_or_else(bad)?;
            v.parse().map_err(|_| bad())
        };
        let params = KdfParams {
            m_cost: field("m")?,
            t_cost: field("t")?,
            p_cost: field("p")?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        // A damaged or doctored row must not make the unlock allocate
        // gigabytes or run for hours.
        if params.m_cost > KdfParams::MAX_M_COST
            || params.t_cost > KdfParams::MAX_T_COST
            || params.p_cost > 16
        {
            return Err(CryptoError::BadParams(
                "the stored cost is beyond any this app sets".into(),
            ));
        }
        Ok(params)
    }
}

/// A passphrase, in memory that is wiped when it is dropped.
///
/// [`Passphrase::new`] takes a `String`'s allocation without copying it, so
/// a passphrase read from the environment or lifted from an FFI call is
/// the one buffer that is wiped. It is not `Clone`, its `Debug` shows
/// nothing, and [`Passphrase::expose`] lends it only to the key
/// derivation and the strength check.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Takes `s` (its allocation, not a copy) into a zeroizing string.
    pub fn new(s: String) -> Passphrase {
        Passphrase(Zeroizing::new(s))
    }

    /// The passphrase text, for the key derivation and the strength check.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Passphrase {
    fn from(s: String) -> Self {
        Passphrase::new(s)
    }
}

impl From<Zeroizing<String>> for Passphrase {
    fn from(s: Zeroizing<String>) -> Self {
        Passphrase(s)
    }
}

/// Copies a string slice into a zeroizing string (for literals in tests
/// and examples; the slice itself is not wiped).
impl From<&str> for Passphrase {
    fn from(s: &str) -> Self {
        Passphrase::new(s.to_owned())
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl PartialEq for Passphrase {
    fn eq(&self, other: &Passphrase) -> bool {
        // Not constant-time: only used to refuse a "new" passphrase equal
        // to the old one, both supplied by the same caller.
        self.expose() == other.expose()
    }
}

/// The lowest zxcvbn score a new passphrase may have: 3, "safely
/// unguessable" (an estimated 10^8 guesses or more). At the production
/// cost one guess takes about 0.14 s of a current CPU core and 64 MiB, so
/// 10^8 guesses cost about 0.45 core-years, and a passphrase of score 4
/// (10^10) about 45 core-years (GPUs do better; by how much for
/// 64 MiB Argon2id was not measured here). Score 4 would ask for longer
/// passphrases than registrars type on a tablet every morning.
pub const MIN_PASSPHRASE_SCORE: u8 = 3;

/// Why a passphrase was refused: zxcvbn's warning and suggestions, which
/// are fixed sentences and never repeat the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakPassphrase {
    /// The zxcvbn score, 0 to 4.
    pub score: u8,
    /// What is wrong and what would help, in English.
    pub reason: String,
}

/// Checks that `passphrase` is strong enough for a new store key: zxcvbn
/// score at least [`MIN_PASSPHRASE_SCORE`], counting the store's `office`
/// code and the app's own words (`crvs`, `kidc`, `registrar`) as words an
/// attacker would try first.
///
/// zxcvbn's word lists are English (and names common in the USA): a
/// romanised Khmer name with a year, such as `sokdara2024`, passes, though
/// it is as guessable to an attacker with a list of Khmer names.
///
/// zxcvbn looks at the first 100 characters and copies parts of them into
/// strings of its own that are not wiped: this runs only when a passphrase
/// is chosen (`init`, a passphrase change), never at unlock.
pub fn check_strength(passphrase: &Passphrase, office: &str) -> Result<(), WeakPassphrase> {
    let entropy = zxcvbn::zxcvbn(passphrase.expose(), &[office, "crvs", "kidc", "registrar"]);
    let score = u8::from(entropy.score());
    if score >= MIN_PASSPHRASE_SCORE {
        return Ok(());
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(f) = entropy.feedback() {
        parts.extend(f.warning().map(|w| w.to_string()));
        parts.extend(f.suggestions().iter().map(|s| s.to_string()));
    }
    if parts.is_empty() {
        parts.push("It would be guessed too quickly.".to_string());
    }
    parts.push("Use four or more words that do not belong together.".to_string());
    Err(WeakPassphrase {
        score,
        reason: parts.join(" "),
    })
}

/// A 256-bit key, zeroized on drop.
struct Key([u8; 32]);

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The store's random data key, and the lookup and row-MAC keys derived
/// from it.
pub struct DataKey {
    key: Key,
    lookup: Key,
    row_mac: Key,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> DataKey {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        DataKey::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8; 32]) -> DataKey {
        let mut lookup = Zeroizing::new([0u8; 32]);
        lookup.copy_from_slice(&hmac_sha256(bytes, b"crvs/lookup-key/v1"));
        let mut row_mac = Zeroizing::new([0u8; 32]);
        row_mac.copy_from_slice(&hmac_sha256(bytes, b"crvs/row-mac-key/v1"));
        DataKey {
            key: Key(*bytes),
            lookup: Key(*lookup),
            row_mac: Key(*row_mac),
        }
    }

    /// Seals `plaintext` bound to `aad` (the row's identity).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.key.0, aad, plaintext)
    }

    /// Opens a value sealed by [`DataKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open_with(&self.key.0, aad, sealed)
    }

    /// A keyed hash of a token (normalize it first), for lookups that must
    /// not store the token itself.
    pub fn lookup_hash(&self, token: &str) -> [u8; 32] {
        hmac_sha256(&self.lookup.0, token.as_bytes())
    }

    /// A copy of the key that authenticates the store's rows (see
    /// [`crate::integrity`]), derived from the data key, so it changes with
    /// nothing but the data key.
    pub fn row_mac_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.row_mac.0)
    }

    /// Whether `other` is the same key (constant-time).
    pub fn same_key(&self, other: &DataKey) -> bool {
        self.key
            .0
            .iter()
            .zip(other.key.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Wraps this key under a passphrase: a random salt, Argon2id with
    /// `params`, then [`seal`](DataKey::seal) with `aad`.
    pub fn wrap(
        &self,
        passphrase: &Passphrase,
        params: KdfParams,
        aad: &[u8],
    ) -> Result<WrappedKey, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        let kek = derive(passphrase, &salt, params)?;
        Ok(WrappedKey {
            params,
            salt: salt.to_vec(),
            sealed: seal_with(&kek, aad, &self.key.0),
        })
    }

    /// Unwraps a key wrapped by [`DataKey::wrap`].
    pub fn unwrap(passphrase: &Passphrase, wrapped: &WrappedKey, aad: &[u8]) -> Result<DataKey, CryptoError> {
        let kek = derive(passphrase, &wrapped.salt, wrapped.params)?;
        let bytes = open_with(&kek, aad, &wrapped.sealed).map_err(|e| match e {
            CryptoError::Tampered => CryptoError::WrongPassphrase,
            other => other,
        })?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| CryptoError::Tampered)?;
        let key = Zeroizing::new(key);
        Ok(DataKey::from_bytes(&key))
    }
}

/// The data key sealed under a passphrase-derived key, with what is needed
/// to derive that key again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Argon2id parameters.
    pub params: KdfParams,
    /// The random salt.
    pub salt: Vec<u8>,
    /// The sealed data key.
    pub sealed: Vec<u8>,
}

fn derive(
    passphrase: &Passphrase,
    salt: &[u8],
    params: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let p = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| CryptoError::BadParams(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p.clone());
    let mut out = Zeroizing::new([0u8; 32]);
    // Our own working memory, wiped afterwards: argon2's own allocation is
    // freed without being wiped, and its last blocks hold the key.
    let mut blocks = Zeroizing::new(vec![argon2::Block::default(); p.block_count()]);
    let result = argon
        .hash_password_into_with_memory(
            passphrase.expose().as_bytes(),
            salt,
            out.as_mut(),
            blocks.as_mut_slice(),
        )
        .map_err(|e| CryptoError::BadParams(e.to_string()));
    drop(blocks);
    result?;
    Ok(out)
}

fn seal_with(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let mut nonce_bytes = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce_bytes);
    let nonce = XNonce::from(nonce_bytes);
    // Encryption with a valid key and nonce only fails for inputs longer
    // than 256 GiB, which a store never holds.
    let ct = cipher
        .encrypt(&nonce, Payload { msg: plaintext, aad })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(SEAL_VERSION);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ct);
    out
}

fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let Some(&version) = sealed.first() else {
        return Err(CryptoError::Tampered);
    };
    if version != SEAL_VERSION {
        return Err(CryptoError::UnknownVersion(version));
    }
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Tampered);
    }
    let nonce = XNonce::try_from(&sealed[1..1 + NONCE_LEN]).map_err(|_| CryptoError::Tampered)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &sealed[1 + NONCE_LEN..],
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Tampered)
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = Zeroizing::new([0x36u8; BLOCK]);
    let mut opad = Zeroizing::new([0x5cu8; BLOCK]);
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad.as_ref())
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad.as_ref())
        .chain_update(inner)
        .finalize()
        .into()
}

/// Associated data naming a value's row: `table \0 row-id \0 column`.
pub fn aad(table: &str, row: &[u8], column: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(table.len() + row.len() + column.len() + 2);
    v.extend_from_slice(table.as_bytes());
    v.push(0);
    v.extend_from_slice(row);
    v.push(0);
    v.extend_from_slice(column.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_in_its_own_row() {
        let key = DataKey::generate();
        let row = aad("records", &[1; 16], "doc");
        let sealed = key.seal(&row, b"hello");
        assert_eq!(sealed[0], SEAL_VERSION);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(key.open(&row, &sealed).unwrap().as_slice(), b"hello");
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_does_not_open() {
        let key = DataKey::generate();
        let sealed = key.seal(&aad("records", &[1; 16], "doc"), b"hello");
        assert_eq!(
            key.open(&aad("records", &[2; 16], "doc"), &sealed).unwrap_err(),
            CryptoError::Tampered
        );
        assert_eq!(
            key.open(&aad("records", &[1; 16], "kidc"), &sealed).unwrap_err(),
            CryptoError::Tampered
        );
        assert_eq!(
            key.open(&aad("outbox", &[1; 16], "doc"), &sealed).unwrap_err(),
            CryptoError::Tampered
        );
    }

    #[test]
    fn a_flipped_bit_or_another_key_does_not_open() {
        let key = DataKey::generate();
        let row = aad("records", &[1; 16], "doc");
        let sealed = key.seal(&row, b"hello");
        for i in 1..sealed.len() {
            let mut s = sealed.clone();
            s[i] ^= 1;
            assert!(key.open(&row, &s).is_err(), "flip at {i} went unnoticed");
        }
        assert!(DataKey::generate().open(&row, &sealed).is_err());
        assert_eq!(key.open(&row, &sealed[..20]).unwrap_err(), CryptoError::Tampered);
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(key.open(&row, &v2).unwrap_err(), CryptoError::UnknownVersion(2));
    }

    #[test]
    fn the_same_value_seals_differently_each_time() {
        let key = DataKey::generate();
        let row = aad("records", &[1; 16], "doc");
        assert_ne!(key.seal(&row, b"same"), key.seal(&row, b"same"));
    }

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_passphrase() {
        let key = DataKey::generate();
        let row = aad("meta", b"", "data_key");
        let wrapped = key
            .wrap(&"correct horse".into(), KdfParams::INSECURE_FOR_TESTS, &row)
            .unwrap();
        let again = DataKey::unwrap(&"correct horse".into(), &wrapped, &row).unwrap();
        let sealed = key.seal(b"x", b"secret");
        assert_eq!(again.open(b"x", &sealed).unwrap().as_slice(), b"secret");
        assert_eq!(again.lookup_hash("sok"), key.lookup_hash("sok"));
        assert_eq!(
            DataKey::unwrap(&"wrong horse".into(), &wrapped, &row).unwrap_err(),
            CryptoError::WrongPassphrase
        );
    }

    #[test]
    fn lookup_hashes_are_keyed_and_differ_from_plain_hashes() {
        let a = DataKey::generate();
        let b = DataKey::generate();
        assert_eq!(a.lookup_hash("sok"), a.lookup_hash("sok"));
        assert_ne!(a.lookup_hash("sok"), b.lookup_hash("sok"));
        assert_ne!(a.lookup_hash("sok"), a.lookup_hash("dara"));
        let plain: [u8; 32] = Sha256::digest(b"sok").into();
        assert_ne!(a.lookup_hash("sok"), plain);
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn kdf_params_round_trip_through_their_stored_form() {
        let p = KdfParams::PRODUCTION;
        assert_eq!(p.encode(), "argon2id;m=65536;t=2;p=1");
        let old = KdfParams::BEFORE_2026_12;
        assert_eq!(old.encode(), "argon2id;m=19456;t=2;p=1");
        assert_eq!(KdfParams::decode(&old.encode()).unwrap(), old);
        assert_eq!(KdfParams::decode(&p.encode()).unwrap(), p);
        assert!(KdfParams::decode("scrypt;m=1;t=1;p=1").is_err());
        assert!(KdfParams::decode("argon2id;m=1;t=1").is_err());
        assert!(KdfParams::decode("argon2id;m=1;t=1;p=1;x=2").is_err());
        assert!(KdfParams::decode("argon2id;m=1048576;t=64;p=16").is_ok());
        assert!(KdfParams::decode("argon2id;m=1048577;t=3;p=1").is_err());
        assert!(KdfParams::decode("argon2id;m=65536;t=65;p=1").is_err());
        assert!(KdfParams::decode("argon2id;m=65536;t=3;p=17").is_err());
    }

    #[test]
    fn a_stronger_setting_is_one_that_costs_more_and_never_less() {
        let old = KdfParams::BEFORE_2026_12;
        let new = KdfParams::PRODUCTION;
        assert!(old.is_weaker_than(&new));
        assert!(!new.is_weaker_than(&old));
        assert!(!new.is_weaker_than(&new));
        assert!(KdfParams::INSECURE_FOR_TESTS.is_weaker_than(&new));
        // More memory but fewer passes: neither is weaker, the store keeps its own.
        let more_memory = KdfParams {
            m_cost: 131072,
            t_cost: 1,
            p_cost: 1,
        };
        assert!(!more_memory.is_weaker_than(&new));
        assert!(!new.is_weaker_than(&more_memory));
        assert_eq!(more_memory.at_least(new), more_memory);
        assert_eq!(old.at_least(new), new);
        assert_eq!(new.at_least(old), new);
        // Lanes alone change nothing.
        assert!(!KdfParams { p_cost: 4, ..new }.is_weaker_than(&new));
    }

    #[test]
    fn weak_passphrases_are_refused_with_a_reason_that_does_not_repeat_them() {
        for weak in [
            "p",
            "letmein",
            "Dragon2024!",
            "171003171003",
            "crvs171003",
            "john2024",
            "qwertyuiop",
            "aaaaaaaaaaaaaaaa",
            "correcthorse",
        ] {
            let Err(err) = check_strength(&weak.into(), "171003") else {
                panic!("{weak} passed");
            };
            assert!(err.score < MIN_PASSPHRASE_SCORE, "{weak}");
            assert!(err.reason.len() > 20, "{weak}: {}", err.reason);
            assert!(
                !err.reason.to_lowercase().contains(&weak.to_lowercase()),
                "the reason repeats {weak}: {}",
                err.reason
            );
        }
    }

    #[test]
    fn the_passphrases_in_the_readme_tests_and_examples_are_strong_enough() {
        for strong in [
            // README, the Kotlin and Python flows.
            "a long passphrase the registrar chose",
            // core/tests, tests/support.
            "correct horse battery staple",
            // examples/registration_day.rs.
            "mango trees shade the commune office",
            // The new passphrase of the CLI's passphrase-change test.
            "rice fields after the monsoon rains",
        ] {
            assert_eq!(check_strength(&strong.into(), "171003"), Ok(()), "{strong}");
        }
    }

    #[test]
    fn a_passphrase_does_not_show_in_debug_output() {
        let p = Passphrase::from("correct horse battery staple".to_string());
        assert_eq!(format!("{p:?}"), "Passphrase(..)");
        assert_eq!(p.expose(), "correct horse battery staple");
    }
}
