//! Enrolment a machine in the middle cannot fake.
//!
//! An operator prints an [`EnrolmentToken`] (`crvs-server enroll-token`)
//! and hands it to the tablet: typed, or scanned as a QR code. The token
//! holds two things:
//!
//! * an 80-bit **secret**. It never crosses the network: the tablet sends
//!   [`EnrolmentToken::lookup_id`] (a hash of it) to name the token, and a
//!   MAC ([`request_mac`]) keyed with another hash of it over its public
//!   key, its office and a fresh nonce. Someone who sees the request can
//!   neither enrol their own key with the token nor replay it for anything
//!   but the same answer.
//! * an 80-bit **fingerprint** of the server's signing key
//!   ([`key_fingerprint`]). The server signs its answer
//!   ([`EnrollResponse::signed_message`]) over the tablet's key and nonce;
//!   the tablet accepts the answer only if the key that signed it has the
//!   token's fingerprint. It then pins that key for every later sync.
//!
//! Forging a key with a given 80-bit fingerprint takes about 2^80 ed25519
//! key generations; a token lives a week.
//!
//! The text form is 32 Crockford base32 symbols and one check symbol, in
//! groups of four: `7Q2M-…-K3F0X`. It is case-insensitive, reads `O` as
//! `0` and `I`/`L` as `1`, ignores dashes and spaces, and the check symbol
//! (mod 37) catches any single mistyped symbol and any swap of two
//! neighbours, so a typo says "mistyped", never "intercepted".
//!
//! [`EnrollResponse::signed_message`]: crate::wire::EnrollResponse::signed_message

use ed25519_dalek::VerifyingKey;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

const SECRET_LEN: usize = 10;
const FINGERPRINT_LEN: usize = 10;
const SYMBOLS: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Crockford's five extra check symbols (values 32 to 36).
const CHECK_EXTRA: &[u8; 5] = b"*~$=U";

const LOOKUP_DOMAIN: &[u8] = b"crvs/enrolment-token/lookup/v2\0";
const MAC_KEY_DOMAIN: &[u8] = b"crvs/enrolment-token/mac-key/v2\0";
const FINGERPRINT_DOMAIN: &[u8] = b"crvs/server-key-fingerprint/v2\0";
const REQUEST_MAC_DOMAIN: &[u8] = b"crvs/enrol-request/v2\0";

/// Why a token's text was refused. Never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not 33 symbols once dashes and spaces are removed.
    #[error("an enrolment token has 33 letters and digits; this one has {0}")]
    Length(usize),
    /// A character that is not in the token alphabet.
    #[error("the enrolment token contains a character that is not a token letter or digit")]
    Symbol,
    /// The check symbol does not match: a typo.
    #[error("the enrolment token is mistyped (its check letter does not match); type it again")]
    Check,
}

/// A one-time enrolment token: a secret and the server key's fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrolmentToken {
    secret: [u8; SECRET_LEN],
    fingerprint: [u8; FINGERPRINT_LEN],
}

impl std::fmt::Debug for EnrolmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs and panics.
        f.debug_struct("EnrolmentToken")
            .field("fingerprint", &hex::encode(self.fingerprint))
            .finish_non_exhaustive()
    }
}

/// The fingerprint of a server signing key that tokens carry.
pub fn key_fingerprint(key: &VerifyingKey) -> [u8; FINGERPRINT_LEN] {
    let digest = Sha256::new()
        .chain_update(FINGERPRINT_DOMAIN)
        .chain_update(key.as_bytes())
        .finalize();
    digest[..FINGERPRINT_LEN].try_into().expect("digest is longer")
}

impl EnrolmentToken {
    /// A new token for the server whose key is `server_key`, with a secret
    /// from `rng` (the operating system's CSPRNG in production).
    pub fn generate(server_key: &VerifyingKey, rng: &mut impl rand::Rng) -> EnrolmentToken {
        let mut secret = [0u8; SECRET_LEN];
        rng.fill_bytes(&mut secret);
        EnrolmentToken {
            secret,
            fingerprint: key_fingerprint(server_key),
        }
    }

    /// Reads a token as typed or scanned.
    pub fn parse(text: &str) -> Result<EnrolmentToken, TokenError> {
        let symbols: Vec<u8> = text
            .bytes()
            .filter(|b| !matches!(b, b'-' | b' ' | b'\t' | b'\r' | b'\n'))
            .map(|b| b.to_ascii_uppercase())
            .collect();
        if symbols.len() != 33 {
            return Err(TokenError::Length(symbols.len()));
        }
        // 32 symbols of 5 bits are the 160 bits of secret and fingerprint.
        let mut raw = [0u8; 20];
        let (mut acc, mut nbits, mut n) = (0u32, 0u32, 0usize);
        for &c in &symbols[..32] {
            acc = (acc << 5) | u32::from(symbol_value(c).ok_or(TokenError::Symbol)?);
            nbits += 5;
            if nbits >= 8 {
                nbits -= 8;
                raw[n] = (acc >> nbits) as u8;
                n += 1;
                acc &= (1 << nbits) - 1;
            }
        }
        let check = check_value(symbols[32]).ok_or(TokenError::Symbol)?;
        if check != mod37(&raw) {
            return Err(TokenError::Check);
        }
        Ok(EnrolmentToken {
            secret: raw[..SECRET_LEN].try_into().expect("fixed split"),
            fingerprint: raw[SECRET_LEN..].try_into().expect("fixed split"),
        })
    }

    fn raw(&self) -> [u8; 20] {
        let mut raw = [0u8; 20];
        raw[..SECRET_LEN].copy_from_slice(&self.secret);
        raw[SECRET_LEN..].copy_from_slice(&self.fingerprint);
        raw
    }

    /// The text to print: 33 symbols in groups of four, dash-separated.
    pub fn to_text(&self) -> String {
        let raw = self.raw();
        let mut symbols = Vec::with_capacity(33);
        let (mut acc, mut nbits) = (0u32, 0u32);
        for b in raw {
            acc = (acc << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 5 {
                nbits -= 5;
                symbols.push(SYMBOLS[((acc >> nbits) & 31) as usize]);
            }
            acc &= (1 << nbits) - 1;
        }
        let check = mod37(&raw);
        symbols.push(if check < 32 {
            SYMBOLS[check as usize]
        } else {
            CHECK_EXTRA[check as usize - 32]
        });
        let mut out = String::with_capacity(41);
        for (i, chunk) in symbols.chunks(4).enumerate() {
            if i > 0 && i < 8 {
                out.push('-');
            }
            out.push_str(std::str::from_utf8(chunk).expect("ASCII"));
        }
        out
    }

    /// The id under which the server stores the token (a hash of its
    /// secret). It names the token on the wire.
    pub fn lookup_id(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(LOOKUP_DOMAIN)
            .chain_update(self.secret)
            .finalize()
            .into()
    }

    /// The key of the enrolment MAC (another hash of the secret), kept by
    /// the server.
    pub fn mac_key(&self) -> [u8; 32] {
        Sha256::new()
            .chain_update(MAC_KEY_DOMAIN)
            .chain_update(self.secret)
            .finalize()
            .into()
    }

    /// Whether `key` is the server key this token was made for.
    pub fn is_for_server(&self, key: &VerifyingKey) -> bool {
        key_fingerprint(key) == self.fingerprint
    }
}

/// The enrolment request a tablet with `public_key` sends for `token`,
/// for the store of `office`, with a fresh random `nonce`.
pub fn enroll_request(
    token: &EnrolmentToken,
    public_key: &[u8; 32],
    office: Option<&str>,
    nonce: [u8; 16],
) -> crate::wire::EnrollRequest {
    crate::wire::EnrollRequest {
        version: crate::wire::FORMAT_VERSION,
        token_id: hex::encode(token.lookup_id()),
        public_key: hex::encode(public_key),
        office: office.map(str::to_string),
        nonce: hex::encode(nonce),
        mac: hex::encode(request_mac(
            &token.mac_key(),
            public_key,
            &nonce,
            office.unwrap_or(""),
        )),
    }
}

/// The MAC an enrolment request carries: HMAC-SHA-256 under the token's
/// [`EnrolmentToken::mac_key`] over the tablet's public key, its nonce and
/// the office its store belongs to (empty if none).
pub fn request_mac(mac_key: &[u8; 32], public_key: &[u8; 32], nonce: &[u8; 16], office: &str) -> [u8; 32] {
    let mut mac =
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(mac_key).expect("HMAC takes any key length");
    mac.update(&request_mac_message(public_key, nonce, office));
    mac.finalize().into_bytes().into()
}

/// Checks a request MAC in constant time.
pub fn verify_request_mac(
    mac_key: &[u8; 32],
    public_key: &[u8; 32],
    nonce: &[u8; 16],
    office: &str,
    tag: &[u8],
) -> bool {
    let mut mac =
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(mac_key).expect("HMAC takes any key length");
    mac.update(&request_mac_message(public_key, nonce, office));
    mac.verify_slice(tag).is_ok()
}

fn request_mac_message(public_key: &[u8; 32], nonce: &[u8; 16], office: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(REQUEST_MAC_DOMAIN.len() + 32 + 16 + 1 + office.len());
    m.extend_from_slice(REQUEST_MAC_DOMAIN);
    m.extend_from_slice(public_key);
    m.extend_from_slice(nonce);
    m.push(u8::try_from(office.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(office.as_bytes());
    m
}

fn symbol_value(c: u8) -> Option<u8> {
    let c = match c {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        other => other,
    };
    SYMBOLS.iter().position(|&s| s == c).map(|p| p as u8)
}

fn check_value(c: u8) -> Option<u8> {
    symbol_value(c).or_else(|| CHECK_EXTRA.iter().position(|&s| s == c).map(|p| 32 + p as u8))
}

/// The 160-bit number `raw` modulo 37.
fn mod37(raw: &[u8; 20]) -> u8 {
    raw.iter().fold(0u32, |r, &b| (r * 256 + u32::from(b)) % 37) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn server_key(n: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[n; 32]).verifying_key()
    }

    #[test]
    fn a_token_prints_as_33_symbols_in_groups_and_reads_back() {
        for _ in 0..200 {
            let t = EnrolmentToken::generate(&server_key(1), &mut rand::rng());
            let text = t.to_text();
            assert_eq!(text.len(), 33 + 7, "{text}");
            assert_eq!(text.matches('-').count(), 7);
            assert_eq!(EnrolmentToken::parse(&text).unwrap(), t);
            // As typed: lower case, no dashes, O for 0 and l for 1, spaces.
            let typed: String = text
                .replace('-', " ")
                .to_lowercase()
                .replace('0', "o")
                .replace('1', "l");
            assert_eq!(EnrolmentToken::parse(&typed).unwrap(), t);
            assert!(t.is_for_server(&server_key(1)));
            assert!(!t.is_for_server(&server_key(2)));
        }
    }

    #[test]
    fn every_single_typo_and_neighbour_swap_is_caught() {
        let t = EnrolmentToken::generate(&server_key(1), &mut rand::rng());
        let symbols: Vec<u8> = t.to_text().bytes().filter(|&b| b != b'-').collect();
        for i in 0..symbols.len() {
            for &s in SYMBOLS.iter().chain(CHECK_EXTRA) {
                if s == symbols[i] || (i < 32 && CHECK_EXTRA.contains(&s)) {
                    continue;
                }
                let mut typo = symbols.clone();
                typo[i] = s;
                let text = String::from_utf8(typo).unwrap();
                assert!(
                    EnrolmentToken::parse(&text).is_err(),
                    "typo at {i} went unnoticed"
                );
            }
            if i + 1 < 32 && symbols[i] != symbols[i + 1] {
                let mut swapped = symbols.clone();
                swapped.swap(i, i + 1);
                let text = String::from_utf8(swapped).unwrap();
                assert_eq!(
                    EnrolmentToken::parse(&text),
                    Err(TokenError::Check),
                    "swap at {i}"
                );
            }
        }
        assert_eq!(EnrolmentToken::parse("ABC"), Err(TokenError::Length(3)));
        assert_eq!(
            EnrolmentToken::parse(&format!("{}!", &t.to_text()[..39])),
            Err(TokenError::Symbol)
        );
    }

    #[test]
    fn the_mac_binds_key_nonce_and_office() {
        let t = EnrolmentToken::generate(&server_key(1), &mut rand::rng());
        let k = t.mac_key();
        let tag = request_mac(&k, &[1; 32], &[2; 16], "171003");
        assert!(verify_request_mac(&k, &[1; 32], &[2; 16], "171003", &tag));
        assert!(!verify_request_mac(&k, &[9; 32], &[2; 16], "171003", &tag));
        assert!(!verify_request_mac(&k, &[1; 32], &[3; 16], "171003", &tag));
        assert!(!verify_request_mac(&k, &[1; 32], &[2; 16], "171004", &tag));
        assert!(!verify_request_mac(&[0; 32], &[1; 32], &[2; 16], "171003", &tag));
        // The lookup id and the MAC key are different hashes of the secret.
        assert_ne!(t.lookup_id(), t.mac_key());
    }

    #[test]
    fn debug_output_keeps_the_secret_out() {
        let t = EnrolmentToken::generate(&server_key(1), &mut rand::rng());
        let secret_hex = hex::encode(t.secret);
        let shown = format!("{t:?}");
        assert!(!shown.contains(&secret_hex));
        assert!(!shown.contains(&t.to_text()));
    }
}
