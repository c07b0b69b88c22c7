//! Framing shared by the signed messages: a version byte, an ed25519
//! signature over a domain separator, the header and the body; and the
//! size-limited decompression and decoding of what it carries.

use std::io::Read;

use bincode::Decode;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{MAX_SYNC_RESPONSE_DECODED, OLDEST_SYNC_VERSION, SIG, SYNC_VERSION, WireError};

pub(super) fn signed_message(domain: &[u8], header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + header.len() + payload.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(header);
    m.extend_from_slice(payload);
    m
}

pub(super) fn seal_frame(key: &SigningKey, domain: &[u8], version: u8, body: &[u8]) -> Vec<u8> {
    let sig = key.sign(&signed_message(domain, &[version], body));
    let mut out = Vec::with_capacity(1 + SIG + body.len());
    out.push(version);
    out.extend_from_slice(&sig.to_bytes());
    out.extend_from_slice(body);
    out
}

pub(super) fn split_frame(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), WireError> {
    let Some(&version) = bytes.first() else {
        return Err(WireError::Truncated);
    };
    if !(OLDEST_SYNC_VERSION..=SYNC_VERSION).contains(&version) {
        return Err(WireError::UnsupportedVersion(version));
    }
    if bytes.len() < 1 + SIG {
        return Err(WireError::Truncated);
    }
    Ok((version, &bytes[1..1 + SIG], &bytes[1 + SIG..]))
}

pub(super) fn verify_frame(
    key: &VerifyingKey,
    domain: &[u8],
    version: u8,
    sig: &[u8],
    body: &[u8],
) -> Result<(), WireError> {
    let sig = Signature::from_slice(sig).map_err(|_| WireError::BadSignature)?;
    key.verify_strict(&signed_message(domain, &[version], body), &sig)
        .map_err(|_| WireError::BadSignature)
}

pub(super) fn decompress_limited(data: &[u8], limit: usize) -> Result<Vec<u8>, WireError> {
    let decoder = zstd::stream::read::Decoder::new(data).map_err(|_| WireError::Decompress)?;
    read_limited(decoder, limit)
}

/// Reads a decompressing reader to its end, refusing more than `limit`
/// bytes (a small input must not expand into a large allocation).
pub(super) fn read_limited(decoder: impl Read, limit: usize) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| WireError::Decompress)?;
    if out.len() > limit {
        return Err(WireError::TooLarge { limit });
    }
    Ok(out)
}

pub(super) fn decode_limited<T: Decode<()>>(bytes: &[u8]) -> Result<T, WireError> {
    // The largest of the messages' limits; each caller checked its own
    // byte limit before decoding.
    decode_within::<T, MAX_SYNC_RESPONSE_DECODED>(bytes)
}

/// Decodes with bincode, refusing to allocate more than `LIMIT` bytes for
/// what length prefixes claim.
pub(super) fn decode_within<T: Decode<()>, const LIMIT: usize>(bytes: &[u8]) -> Result<T, WireError> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, read) =
        bincode::decode_from_slice(bytes, config).map_err(|e| WireError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(WireError::Decode("trailing bytes".into()));
    }
    Ok(value)
}
