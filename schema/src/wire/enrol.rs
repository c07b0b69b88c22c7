//! The enrolment messages, `POST /v1/enroll` (JSON).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

#[cfg(doc)]
use super::FORMAT_VERSION;
use super::WireError;

/// Enrolment, `POST /v1/enroll` (JSON). See [`crate::enrol`]: the token's
/// secret never travels; the request names the token by its lookup id and
/// proves it holds the secret with a MAC over its key, nonce and office.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollRequest {
    /// Format version, [`FORMAT_VERSION`].
    pub version: u8,
    /// [`crate::enrol::EnrolmentToken::lookup_id`], hex.
    #[serde(default)]
    pub token_id: String,
    /// The device's ed25519 public key, hex.
    pub public_key: String,
    /// The office the tablet's store belongs to. When present, a token for
    /// another office is refused *without* being used up, so the operator
    /// can still hand it to the right tablet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub office: Option<String>,
    /// 16 random bytes, hex: the server's signed answer repeats them.
    #[serde(default)]
    pub nonce: String,
    /// [`crate::enrol::request_mac`] over `public_key`, `nonce` and
    /// `office`, hex.
    #[serde(default)]
    pub mac: String,
}

/// The answer to an enrolment, signed by the server key that the token's
/// fingerprint names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnrollResponse {
    /// The device id the server assigned (a UUID).
    pub device_id: String,
    /// The office whose records this device may write.
    pub office: String,
    /// The server's ed25519 public key, hex. The tablet pins it, once its
    /// fingerprint matches the token's.
    pub server_public_key: String,
    /// The server's signature over [`EnrollResponse::signed_message`], hex.
    #[serde(default)]
    pub signature: String,
    /// The office's roster and rejection codes
    /// ([`crate::staff::OfficeDirectory`]), sealed with the server key
    /// ([`super::seal_directory`]), hex. Absent from older servers; older
    /// tablets ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
}

const ENROLL_RESPONSE_DOMAIN: &[u8] = b"crvs/enrol-response/v2\0";

impl EnrollResponse {
    /// What the server signs: the answer's fields, bound to the request's
    /// public key and nonce, so an answer is good for one request only.
    pub fn signed_message(&self, request_public_key: &str, request_nonce: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(ENROLL_RESPONSE_DOMAIN);
        for field in [
            request_public_key,
            request_nonce,
            &self.device_id,
            &self.office,
            &self.server_public_key,
        ] {
            m.extend_from_slice(&(field.len() as u32).to_le_bytes());
            m.extend_from_slice(field.as_bytes());
        }
        m
    }

    /// Signs the answer to the request with `public_key` and `nonce`.
    pub fn sign(&mut self, key: &SigningKey, request_public_key: &str, request_nonce: &str) {
        let sig = key.sign(&self.signed_message(request_public_key, request_nonce));
        self.signature = hex::encode(sig.to_bytes());
    }

    /// Verifies the answer's signature with the key it names, and returns
    /// that key. The caller must still check the key against the token.
    pub fn verify(&self, request_public_key: &str, request_nonce: &str) -> Result<VerifyingKey, WireError> {
        let key: [u8; 32] = hex::decode(&self.server_public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::BadSignature)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| WireError::BadSignature)?;
        if key.is_weak() {
            return Err(WireError::BadSignature);
        }
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or(WireError::BadSignature)?;
        key.verify_strict(&self.signed_message(request_public_key, request_nonce), &sig)
            .map_err(|_| WireError::BadSignature)?;
        Ok(key)
    }
}
