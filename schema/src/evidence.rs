//! Server-signed evidence of an issued KIdC.
//!
//! When the server issues a code, every answer that carries the record's
//! new code also carries an [`IssuanceProof`]: the server's signature over
//! the code and the record it went to. The tablet keeps the proof with the
//! record. If the server is later restored from a backup that predates
//! the issuance, the tablet's resent change sets travel with their
//! records' proofs, and the server re-records the code it had issued
//! (after checking its own signature) instead of drawing a new one.
//!
//! The proof binds nothing else: no time, no device. The same code for
//! the same record always yields the same proof (ed25519 signatures are
//! deterministic), so it can be made again from the issuance log at any
//! time.

use bincode::{Decode, Encode};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::Kidc;

const DOMAIN: &[u8] = b"crvs/kidc-issuance/v1\0";

/// The server's signed statement "code `kidc` was issued to record
/// `record_id`".
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct IssuanceProof {
    /// The record's UUIDv7.
    pub record_id: [u8; 16],
    /// The code, ten ASCII digits.
    pub kidc: [u8; 10],
    /// Ed25519 signature by the server key over the domain, the record id
    /// and the code.
    pub signature: [u8; 64],
}

/// Why a proof does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The code is not a valid KIdC.
    #[error("the proof's code is not a valid KIdC")]
    BadCode,
    /// The signature is not the server's.
    #[error("the proof is not signed by this server")]
    BadSignature,
}

fn message(record_id: &[u8; 16], kidc: &[u8; 10]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 26);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(record_id);
    m.extend_from_slice(kidc);
    m
}

impl IssuanceProof {
    /// Signs "`kidc` was issued to `record_id`" with the server key.
    pub fn sign(key: &SigningKey, record_id: [u8; 16], kidc: &Kidc) -> IssuanceProof {
        let mut code = [0u8; 10];
        code.copy_from_slice(kidc.as_str().as_bytes());
        let signature = key.sign(&message(&record_id, &code)).to_bytes();
        IssuanceProof {
            record_id,
            kidc: code,
            signature,
        }
    }

    /// Checks the signature with the server's key and returns the code.
    pub fn verify(&self, server_key: &VerifyingKey) -> Result<Kidc, ProofError> {
        let kidc = std::str::from_utf8(&self.kidc)
            .ok()
            .and_then(|s| Kidc::parse(s).ok())
            .ok_or(ProofError::BadCode)?;
        server_key
            .verify(
                &message(&self.record_id, &self.kidc),
                &Signature::from_bytes(&self.signature),
            )
            .map_err(|_| ProofError::BadSignature)?;
        Ok(kidc)
    }

    /// [`IssuanceProof::verify`] of every proof, in order. The signatures
    /// are checked as one batch (about twice as fast: a sync brings a code
    /// for every record it pushed); if the batch fails, each proof is
    /// checked alone, so that one bad proof does not spoil the others.
    pub fn verify_all(proofs: &[IssuanceProof], server_key: &VerifyingKey) -> Vec<Result<Kidc, ProofError>> {
        let codes: Vec<Option<Kidc>> = proofs
            .iter()
            .map(|p| {
                std::str::from_utf8(&p.kidc)
                    .ok()
                    .and_then(|s| Kidc::parse(s).ok())
            })
            .collect();
        let messages: Vec<Vec<u8>> = proofs.iter().map(|p| message(&p.record_id, &p.kidc)).collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let signatures: Vec<Signature> = proofs
            .iter()
            .map(|p| Signature::from_bytes(&p.signature))
            .collect();
        let keys = vec![*server_key; proofs.len()];
        let all_good = codes.iter().all(Option::is_some)
            && ed25519_dalek::verify_batch(&refs, &signatures, &keys).is_ok();
        if all_good {
            return codes.into_iter().map(|c| c.ok_or(ProofError::BadCode)).collect();
        }
        proofs.iter().map(|p| p.verify(server_key)).collect()
    }

    /// The proof's encoding, for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(90);
        v.extend_from_slice(&self.record_id);
        v.extend_from_slice(&self.kidc);
        v.extend_from_slice(&self.signature);
        v
    }

    /// Reads [`IssuanceProof::to_bytes`]; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<IssuanceProof> {
        if bytes.len() != 90 {
            return None;
        }
        Some(IssuanceProof {
            record_id: bytes[..16].try_into().ok()?,
            kidc: bytes[16..26].try_into().ok()?,
            signature: bytes[26..].try_into().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn code() -> Kidc {
        Kidc::parse("1000000001").expect("valid")
    }

    #[test]
    fn a_proof_verifies_with_the_signing_server_only() {
        let p = IssuanceProof::sign(&key(1), [7; 16], &code());
        assert_eq!(p.verify(&key(1).verifying_key()), Ok(code()));
        assert_eq!(p.verify(&key(2).verifying_key()), Err(ProofError::BadSignature));
    }

    #[test]
    fn a_proof_moved_to_another_record_or_code_fails() {
        let p = IssuanceProof::sign(&key(1), [7; 16], &code());
        let mut moved = p.clone();
        moved.record_id = [8; 16];
        assert_eq!(
            moved.verify(&key(1).verifying_key()),
            Err(ProofError::BadSignature)
        );
        let mut other = p.clone();
        other.kidc = *b"1000000028";
        assert!(Kidc::parse("1000000028").is_ok(), "a valid code");
        assert_eq!(
            other.verify(&key(1).verifying_key()),
            Err(ProofError::BadSignature)
        );
        let mut junk = p;
        junk.kidc = *b"10000000x1";
        assert_eq!(junk.verify(&key(1).verifying_key()), Err(ProofError::BadCode));
    }

    #[test]
    fn checked_together_a_forged_proof_fails_alone_and_the_others_pass() {
        let k = key(1);
        let good: Vec<IssuanceProof> = (0..5u8)
            .map(|i| IssuanceProof::sign(&k, [i; 16], &code()))
            .collect();
        assert!(
            IssuanceProof::verify_all(&good, &k.verifying_key())
                .iter()
                .all(|r| r == &Ok(code()))
        );
        assert_eq!(
            IssuanceProof::verify_all(&good, &key(2).verifying_key()),
            vec![Err(ProofError::BadSignature); 5],
            "another server's key verifies none"
        );
        let mut mixed = good.clone();
        mixed[2].record_id = [9; 16];
        mixed[4].kidc = *b"10000000x1";
        let results = IssuanceProof::verify_all(&mixed, &k.verifying_key());
        assert_eq!(results[0], Ok(code()));
        assert_eq!(results[1], Ok(code()));
        assert_eq!(results[2], Err(ProofError::BadSignature));
        assert_eq!(results[3], Ok(code()));
        assert_eq!(results[4], Err(ProofError::BadCode));
        assert!(IssuanceProof::verify_all(&[], &k.verifying_key()).is_empty());
    }

    #[test]
    fn the_same_issuance_always_gives_the_same_proof_and_it_round_trips() {
        let a = IssuanceProof::sign(&key(1), [7; 16], &code());
        let b = IssuanceProof::sign(&key(1), [7; 16], &code());
        assert_eq!(a, b);
        assert_eq!(IssuanceProof::from_bytes(&a.to_bytes()), Some(a));
        assert_eq!(IssuanceProof::from_bytes(&[0; 89]), None);
    }
}
