//! Value encryption for the tablet store.
//!
//! * A random 256-bit [`DataKey`] seals every value that holds personal data
//!   with XChaCha20-Poly1305: [`DataKey::seal`] gives
//!   `[version 1][24-byte nonce][ciphertext + 16-byte tag]`. The associated
//!   data names the value's row (for example `records\0<id>\0doc`, see
//!   [`aad`]), so a ciphertext copied into another row does not open.
//! * The data key is wrapped (sealed) by a key derived with Argon2id from the
//!   registrar's passphrase ([`KdfParams`], stored beside the salt so the
//!   cost can change). A wrong passphrase fails to unwrap it:
//!   [`CryptoError::WrongPassphrase`].
//! * A separate lookup key, derived from the data key, gives keyed hashes
//!   of normalized tokens ([`DataKey::lookup_hash`]) for future searches by
//!   name without storing names.
//!
//! Every key is zeroized on drop.

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
    /// The production setting (OWASP's Argon2id baseline): 19 MiB, 2
    /// passes, 1 lane.
    pub const PRODUCTION: KdfParams = KdfParams {
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

    /// The stored form, `argon2id;m=19456;t=2;p=1`.
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
        Ok(params)
    }
}

/// A 256-bit key, zeroized on drop.
struct Key([u8; 32]);

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The store's random data key, and the lookup key derived from it.
pub struct DataKey {
    key: Key,
    lookup: Key,
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
        DataKey {
            key: Key(*bytes),
            lookup: Key(*lookup),
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

    /// Wraps this key under a passphrase: a random salt, Argon2id with
    /// `params`, then [`seal`](DataKey::seal) with `aad`.
    pub fn wrap(&self, passphrase: &str, params: KdfParams, aad: &[u8]) -> Result<WrappedKey, CryptoError> {
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
    pub fn unwrap(passphrase: &str, wrapped: &WrappedKey, aad: &[u8]) -> Result<DataKey, CryptoError> {
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

fn derive(passphrase: &str, salt: &[u8], params: KdfParams) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let p = argon2::Params::new(params.m_cost, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| CryptoError::BadParams(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, out.as_mut())
        .map_err(|e| CryptoError::BadParams(e.to_string()))?;
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
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
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
            .wrap("correct horse", KdfParams::INSECURE_FOR_TESTS, &row)
            .unwrap();
        let again = DataKey::unwrap("correct horse", &wrapped, &row).unwrap();
        let sealed = key.seal(b"x", b"secret");
        assert_eq!(again.open(b"x", &sealed).unwrap().as_slice(), b"secret");
        assert_eq!(again.lookup_hash("sok"), key.lookup_hash("sok"));
        assert_eq!(
            DataKey::unwrap("wrong horse", &wrapped, &row).unwrap_err(),
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
        assert_eq!(p.encode(), "argon2id;m=19456;t=2;p=1");
        assert_eq!(KdfParams::decode(&p.encode()).unwrap(), p);
        assert!(KdfParams::decode("scrypt;m=1;t=1;p=1").is_err());
        assert!(KdfParams::decode("argon2id;m=1;t=1").is_err());
        assert!(KdfParams::decode("argon2id;m=1;t=1;p=1;x=2").is_err());
    }
}
