//! The sync protocol's wire format.
//!
//! Three signed messages cross the wire, each starting with a format-version
//! byte ([`FORMAT_VERSION`]) so that old tablets stay readable:
//!
//! * [`SignedChangeSet`]: a device's batch of raw automerge changes, with its
//!   per-device sequence number and the hash of its previous change set (a
//!   hash chain), signed once by the device key. Self-authenticating: any
//!   carrier (HTTP, a relay tablet, a USB stick) may transport it.
//!
//!   ```text
//!   0      1          17        25          89
//!   │ ver  │ device_id │ seq (LE) │ signature │ zstd(bincode(ChangeSet)) …
//!   ```
//!   Version 2 ([`CHANGE_SET_VERSION`]) compresses with a zstd dictionary
//!   trained on synthetic records ([`CHANGE_SET_DICTIONARY`]): a change set
//!   of one record is about a quarter of its size without it, which is
//!   what a commune office that syncs a few births a day sends. Version 1
//!   (no dictionary) still decodes.
//!   The signature covers everything but itself, behind a domain separator.
//!   The header is readable before the signature is checked, so a server can
//!   find the key and spot a resend without decompressing anything.
//! * [`SyncRequest`]: one HTTP request: the device's pull cursor and a run
//!   of signed change sets, signed by the device key.
//! * [`SyncResponse`]: the server's answer: an acknowledgement for each
//!   change set, at most one refusal, and the server's changes to that
//!   device's records since its cursor; signed by the server key that the
//!   tablet pinned at enrolment, and bound to the request by its hash.
//!
//! Decoders of untrusted bytes never allocate more than the limits below.

use bincode::{Decode, Encode};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::evidence::IssuanceProof;

mod enrol;
mod frame;

#[cfg(test)]
mod tests;

pub use enrol::{EnrollRequest, EnrollResponse};
use frame::{
    decode_limited, decode_within, decompress_limited, read_limited, seal_frame, signed_message, split_frame,
    verify_frame,
};

/// The format version of the enrolment messages and of the
/// `x-crvs-protocol` header. Version 2: the token authenticates the
/// server, and sync requests carry a request counter.
pub const FORMAT_VERSION: u8 = 2;
/// Largest signed change set accepted, compressed.
pub const MAX_CHANGE_SET_BYTES: usize = 4 << 20;
/// Largest change set accepted once decompressed.
pub const MAX_CHANGE_SET_DECODED: usize = 16 << 20;
/// Largest sync request accepted (header and body). A tablet sends at
/// most ten change sets and 4 MiB per request, or one change set of at
/// most [`MAX_CHANGE_SET_BYTES`].
pub const MAX_SYNC_REQUEST_BYTES: usize = 8 << 20;
/// Most change sets in one sync request (a tablet sends at most ten).
pub const MAX_CHANGE_SETS_PER_REQUEST: usize = 16;
/// Most bytes that all change sets of one request may decompress to
/// together (each is also held to [`MAX_CHANGE_SET_DECODED`]).
pub const MAX_REQUEST_DECODED: usize = 32 << 20;
/// Largest sync response accepted by a tablet, decompressed.
pub const MAX_SYNC_RESPONSE_DECODED: usize = 64 << 20;
/// Most records in one change set (a tablet puts at most 100 in one).
pub const MAX_RECORDS_PER_CHANGE_SET: usize = 1000;
/// Most KIdC proofs in one sync request: one per record it may carry.
pub const MAX_EVIDENCE_PER_REQUEST: usize = MAX_CHANGE_SETS_PER_REQUEST * MAX_RECORDS_PER_CHANGE_SET;
/// zstd level for change sets, chosen by measurement (`cargo bench -p
/// crvs-bench --bench wire`, its `change_set_levels`): with the dictionary, level
/// 9 costs ~15 µs a record where 19 costs ~760 µs (about two thirds of a
/// tablet's sync), for ~5% more bytes (115 against 109 a record).
/// Levels 10 to 14 compress worse than 9 on these bodies; 15 and up save
/// at most 6 bytes a record for 15 to 50 times the time, and the tablet's
/// battery pays for it.
pub const CHANGE_SET_ZSTD_LEVEL: i32 = 9;
/// The version byte of the change sets this build seals.
pub const CHANGE_SET_VERSION: u8 = 2;
/// The zstd dictionary of version-2 change sets, trained by `cargo run
/// --release -p crvs-bench --example train_dictionary` on synthetic
/// records only (fragments of the samples end up in every binary). A new
/// dictionary needs a new version byte: sealed change sets wait in tablet
/// outboxes for weeks.
pub const CHANGE_SET_DICTIONARY: &[u8] = include_bytes!("../../dict/change-set-v2.zdict");

/// The dictionary, prepared once for compression.
fn encoder_dictionary() -> &'static zstd::dict::EncoderDictionary<'static> {
    static D: std::sync::OnceLock<zstd::dict::EncoderDictionary<'static>> = std::sync::OnceLock::new();
    D.get_or_init(|| zstd::dict::EncoderDictionary::copy(CHANGE_SET_DICTIONARY, CHANGE_SET_ZSTD_LEVEL))
}

/// The dictionary, prepared once for decompression.
fn decoder_dictionary() -> &'static zstd::dict::DecoderDictionary<'static> {
    static D: std::sync::OnceLock<zstd::dict::DecoderDictionary<'static>> = std::sync::OnceLock::new();
    D.get_or_init(|| zstd::dict::DecoderDictionary::copy(CHANGE_SET_DICTIONARY))
}

const CHANGE_SET_DOMAIN: &[u8] = b"crvs/change-set/v1\0";
const REQUEST_DOMAIN: &[u8] = b"crvs/sync-request/v2\0";
const RESPONSE_DOMAIN: &[u8] = b"crvs/sync-response/v2\0";

const HEADER: usize = 1 + 16 + 8;
const SIG: usize = 64;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Why bytes were refused. No message echoes the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Too short to hold the header.
    #[error("message is truncated")]
    Truncated,
    /// A format version this build does not know.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// Larger than the limit.
    #[error("message is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit that was passed.
        limit: usize,
    },
    /// More items than the limit.
    #[error("more {what} than the limit of {limit}")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The signature does not verify with the expected key.
    #[error("signature does not verify")]
    BadSignature,
    /// Decompression failed.
    #[error("payload is not valid zstd")]
    Decompress,
    /// Decoding failed.
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// Encoding failed.
    #[error("payload does not encode: {0}")]
    Encode(String),
}

/// Raw automerge changes for one record.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RecordChanges {
    /// The record's UUIDv7.
    pub record_id: [u8; 16],
    /// Uncompressed automerge changes (`Change::raw_bytes`), in causal order.
    pub changes: Vec<Vec<u8>>,
}

/// The signed content of a change set.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ChangeSet {
    /// Hash of the device's previous signed change set (zeros for seq 1).
    pub prev_hash: Hash,
    /// Device clock when the change set was made, ms since the epoch.
    pub device_clock_ms: i64,
    /// The records it changes.
    pub records: Vec<RecordChanges>,
}

/// A signed change set, as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedChangeSet {
    bytes: Vec<u8>,
}

impl SignedChangeSet {
    /// Encodes, compresses and signs a change set.
    pub fn seal(
        key: &SigningKey,
        device_id: [u8; 16],
        seq: u64,
        body: &ChangeSet,
    ) -> Result<Self, WireError> {
        let encoded = bincode::encode_to_vec(body, bincode::config::standard())
            .map_err(|e| WireError::Encode(e.to_string()))?;
        let payload = zstd::bulk::Compressor::with_prepared_dictionary(encoder_dictionary())
            .and_then(|mut c| c.compress(&encoded))
            .map_err(|e| WireError::Encode(e.to_string()))?;
        let mut bytes = Vec::with_capacity(HEADER + SIG + payload.len());
        bytes.push(CHANGE_SET_VERSION);
        bytes.extend_from_slice(&device_id);
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes.extend_from_slice(&[0; SIG]);
        bytes.extend_from_slice(&payload);
        let sig = key.sign(&signed_message(
            CHANGE_SET_DOMAIN,
            &bytes[..HEADER],
            &bytes[HEADER + SIG..],
        ));
        bytes[HEADER..HEADER + SIG].copy_from_slice(&sig.to_bytes());
        Ok(SignedChangeSet { bytes })
    }

    /// Checks the framing of untrusted bytes (version, size). The signature
    /// is checked by [`SignedChangeSet::open`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, WireError> {
        if bytes.len() > MAX_CHANGE_SET_BYTES {
            return Err(WireError::TooLarge {
                limit: MAX_CHANGE_SET_BYTES,
            });
        }
        if bytes.is_empty() {
            return Err(WireError::Truncated);
        }
        if bytes[0] != 1 && bytes[0] != CHANGE_SET_VERSION {
            return Err(WireError::UnsupportedVersion(bytes[0]));
        }
        if bytes.len() < HEADER + SIG + 1 {
            return Err(WireError::Truncated);
        }
        Ok(SignedChangeSet { bytes })
    }

    /// The signed bytes, verbatim.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Consumes into the signed bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The device that signed it (as claimed until verified).
    pub fn device_id(&self) -> [u8; 16] {
        self.bytes[1..17].try_into().expect("length checked")
    }

    /// The per-device sequence number (as claimed until verified).
    pub fn seq(&self) -> u64 {
        u64::from_le_bytes(self.bytes[17..25].try_into().expect("length checked"))
    }

    /// The hash of the whole signed bytes, the next link of the hash chain.
    pub fn hash(&self) -> Hash {
        Sha256::digest(&self.bytes).into()
    }

    /// Verifies the signature.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), WireError> {
        let sig =
            Signature::from_slice(&self.bytes[HEADER..HEADER + SIG]).map_err(|_| WireError::BadSignature)?;
        key.verify_strict(
            &signed_message(
                CHANGE_SET_DOMAIN,
                &self.bytes[..HEADER],
                &self.bytes[HEADER + SIG..],
            ),
            &sig,
        )
        .map_err(|_| WireError::BadSignature)
    }

    /// Verifies the signature, then decompresses and decodes within limits.
    pub fn open(&self, key: &VerifyingKey) -> Result<ChangeSet, WireError> {
        let mut budget = MAX_CHANGE_SET_DECODED;
        self.open_within(key, &mut budget)
    }

    /// [`SignedChangeSet::open`], drawing the decompressed bytes from a
    /// budget shared by the change sets of one request
    /// ([`MAX_REQUEST_DECODED`]): many small bombs in one request cannot
    /// add up to more than the budget.
    pub fn open_within(&self, key: &VerifyingKey, budget: &mut usize) -> Result<ChangeSet, WireError> {
        self.verify(key)?;
        let limit = MAX_CHANGE_SET_DECODED.min(*budget);
        let payload = &self.bytes[HEADER + SIG..];
        let decoded = match self.bytes[0] {
            1 => decompress_limited(payload, limit)?,
            _ => {
                let decoder =
                    zstd::stream::read::Decoder::with_prepared_dictionary(payload, decoder_dictionary())
                        .map_err(|_| WireError::Decompress)?;
                read_limited(decoder, limit)?
            }
        };
        *budget -= decoded.len();
        let body: ChangeSet = decode_within::<_, { 2 * MAX_CHANGE_SET_DECODED }>(&decoded)?;
        if body.records.len() > MAX_RECORDS_PER_CHANGE_SET {
            return Err(WireError::TooMany {
                what: "records in one change set",
                limit: MAX_RECORDS_PER_CHANGE_SET,
            });
        }
        Ok(body)
    }
}

/// One HTTP sync request, before signing.
///
/// Sealed ([`SyncRequest::seal`]) it is a [`RequestHeader`] followed by the
/// bincode body. The header is authenticated on its own, so a server can
/// refuse a stranger, a replay or an oversized body after reading 129
/// bytes, before it buffers anything:
///
/// ```text
/// 0     1           17            25             33              65          129
/// │ ver │ device_id │ counter (LE) │ body_len (LE) │ SHA-256(body) │ signature │ bincode(SyncRequest) …
/// ```
///
/// The signature covers the first 65 bytes behind a domain separator; the
/// body is bound to them by its length and hash.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SyncRequest {
    /// The device making the request.
    pub device_id: [u8; 16],
    /// The device's request counter: strictly greater than that of every
    /// request the server accepted from it before. A replayed or
    /// reordered request is refused, and changes nothing.
    pub counter: u64,
    /// The server feed position the device has applied so far.
    pub cursor: u64,
    /// Device clock, ms since the epoch.
    pub device_clock_ms: i64,
    /// Signed change sets ([`SignedChangeSet::as_bytes`]), in sequence order.
    pub change_sets: Vec<Vec<u8>>,
    /// The server's proofs of the KIdCs that records of these change sets
    /// already hold: after a restore from backup the server re-records
    /// those codes instead of drawing new ones.
    pub evidence: Vec<IssuanceProof>,
    /// The store's lineage: random, made anew each time the store adopts
    /// the server's chain position. Two copies of one store (a clone, or
    /// an old backup put back while the original lives on) end up with
    /// different lineages, and the server refuses the one that is not the
    /// device's current lineage. Zeros: none (a version-2 tablet).
    pub lineage: [u8; 16],
    /// Set while the store has just adopted the server's chain position:
    /// that position. The server switches the device to this request's
    /// lineage only if it is still its position.
    pub adopted: Option<ChainPosition>,
    /// Version 6: change sets this tablet sent in a request whose answer
    /// never arrived (the link went down, or the tablet was stopped). The
    /// server acknowledges, first in its `acks` and in order, those of
    /// them it holds (as applied or set aside), up to the first it does
    /// not: the tablet need not send again what already arrived. At most
    /// [`MAX_RESUME_SEQS`] of them.
    pub resume: Option<SeqRange>,
    /// Version 6: what the tablet holds and runs, for operators
    /// (`crvs-server devices`, `/metrics`). Counts and a version string,
    /// never personal data.
    pub report: Option<TabletReport>,
}

/// What a tablet reports with each sync request (version 6). A report
/// whose app version is not well-formed
/// ([`TabletReport::version_is_well_formed`]) is dropped by the server,
/// never refused: a label must not block a tablet's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, serde::Serialize)]
pub struct TabletReport {
    /// Change sets in its outbox behind this request's (what is left
    /// once the server takes it).
    pub change_sets_waiting: u64,
    /// Records with changes not in this request nor acknowledged.
    pub records_waiting: u64,
    /// The tablet software's version (`crvs-core`'s), printable ASCII, at
    /// most [`MAX_APP_VERSION_LEN`] bytes.
    pub app_version: String,
}

/// Longest app version a [`TabletReport`] may carry.
pub const MAX_APP_VERSION_LEN: usize = 32;

impl TabletReport {
    /// Whether the version string is well-formed: 1 to
    /// [`MAX_APP_VERSION_LEN`] bytes of printable ASCII without spaces
    /// (what a semantic version and a build tag use).
    pub fn version_is_well_formed(&self) -> bool {
        !self.app_version.is_empty()
            && self.app_version.len() <= MAX_APP_VERSION_LEN
            && self.app_version.bytes().all(|b| b.is_ascii_graphic())
    }
}

/// Change sets `from..=to` of a device's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct SeqRange {
    /// The first.
    pub from: u64,
    /// The last.
    pub to: u64,
}

/// Most change sets one request may ask the server about
/// ([`SyncRequest::resume`]): a tablet has at most two requests in flight.
pub const MAX_RESUME_SEQS: u64 = 4 * MAX_CHANGE_SETS_PER_REQUEST as u64;

/// A version-3 to -5 request body: [`SyncRequest`] without `resume`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct SyncRequestV3 {
    device_id: [u8; 16],
    counter: u64,
    cursor: u64,
    device_clock_ms: i64,
    change_sets: Vec<Vec<u8>>,
    evidence: Vec<IssuanceProof>,
    lineage: [u8; 16],
    adopted: Option<ChainPosition>,
}

impl From<SyncRequestV3> for SyncRequest {
    fn from(r: SyncRequestV3) -> SyncRequest {
        SyncRequest {
            device_id: r.device_id,
            counter: r.counter,
            cursor: r.cursor,
            device_clock_ms: r.device_clock_ms,
            change_sets: r.change_sets,
            evidence: r.evidence,
            lineage: r.lineage,
            adopted: r.adopted,
            resume: None,
            report: None,
        }
    }
}

/// A device's position in its hash chain: the last applied change set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub struct ChainPosition {
    /// Its sequence number (0: none yet).
    pub seq: u64,
    /// Its hash (zeros: none yet).
    pub hash: Hash,
}

/// A version-2 request body: [`SyncRequest`] without `evidence`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct SyncRequestV2 {
    device_id: [u8; 16],
    counter: u64,
    cursor: u64,
    device_clock_ms: i64,
    change_sets: Vec<Vec<u8>>,
}

impl From<SyncRequestV2> for SyncRequest {
    fn from(r: SyncRequestV2) -> SyncRequest {
        SyncRequestV3 {
            device_id: r.device_id,
            counter: r.counter,
            cursor: r.cursor,
            device_clock_ms: r.device_clock_ms,
            change_sets: r.change_sets,
            evidence: Vec::new(),
            lineage: [0; 16],
            adopted: None,
        }
        .into()
    }
}

/// The format version of the sync request and response frames this build
/// seals. Version 1 requests carried a random nonce that nobody checked,
/// so a captured request could be replayed; servers refuse them, and a
/// tablet must be updated (its sealed change sets, of either change-set
/// version, travel unchanged inside later requests). Version 3 adds the
/// KIdC proofs (`SyncRequest::evidence`, `SyncResponse::issuances`);
/// version 4 the office's pending notifications
/// (`SyncResponse::notifications`; its request is version 3's); version 5
/// the office's directory (`SyncResponse::directory`); version 6 the
/// change sets whose answer was lost (`SyncRequest::resume`; its answer is
/// version 5's). Servers still read versions 2 to 5 and answer each in
/// its own version.
pub const SYNC_VERSION: u8 = 6;
/// The oldest sync version servers still read.
pub const OLDEST_SYNC_VERSION: u8 = 2;

/// Length of the authenticated header in front of a sync request's body.
pub const REQUEST_HEADER_LEN: usize = 1 + 16 + 8 + 8 + 32 + SIG;
const REQUEST_SIGNED_LEN: usize = REQUEST_HEADER_LEN - SIG;

/// The authenticated header of a sealed [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    bytes: [u8; REQUEST_HEADER_LEN],
}

impl RequestHeader {
    /// Reads the header from the start of a sealed request (the rest may
    /// not have arrived yet). Checks the version only.
    pub fn parse(bytes: &[u8]) -> Result<RequestHeader, WireError> {
        let Some(&version) = bytes.first() else {
            return Err(WireError::Truncated);
        };
        if !(OLDEST_SYNC_VERSION..=SYNC_VERSION).contains(&version) {
            return Err(WireError::UnsupportedVersion(version));
        }
        let bytes: [u8; REQUEST_HEADER_LEN] = bytes
            .get(..REQUEST_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::Truncated)?;
        Ok(RequestHeader { bytes })
    }

    /// The format version the request was sealed in (its answer is
    /// sealed in the same one).
    pub fn version(&self) -> u8 {
        self.bytes[0]
    }

    /// The device that claims to have signed it.
    pub fn device_id(&self) -> [u8; 16] {
        self.bytes[1..17].try_into().expect("fixed layout")
    }

    /// The request counter it claims.
    pub fn counter(&self) -> u64 {
        u64::from_le_bytes(self.bytes[17..25].try_into().expect("fixed layout"))
    }

    /// The length of the body that follows, as signed.
    pub fn body_len(&self) -> u64 {
        u64::from_le_bytes(self.bytes[25..33].try_into().expect("fixed layout"))
    }

    fn body_hash(&self) -> &[u8] {
        &self.bytes[33..65]
    }

    /// Verifies the header's signature with the device's key.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), WireError> {
        let sig =
            Signature::from_slice(&self.bytes[REQUEST_SIGNED_LEN..]).map_err(|_| WireError::BadSignature)?;
        key.verify_strict(
            &signed_message(REQUEST_DOMAIN, &self.bytes[..REQUEST_SIGNED_LEN], &[]),
            &sig,
        )
        .map_err(|_| WireError::BadSignature)
    }

    /// Checks that `body` is the one the header signed (length and hash),
    /// then decodes it within limits. Call [`RequestHeader::verify`] first.
    pub fn open_body(&self, body: &[u8]) -> Result<SyncRequest, WireError> {
        if body.len() as u64 != self.body_len() {
            return Err(WireError::Truncated);
        }
        if Sha256::digest(body).as_slice() != self.body_hash() {
            return Err(WireError::BadSignature);
        }
        let request: SyncRequest = match self.version() {
            2 => decode_within::<SyncRequestV2, { 2 * MAX_SYNC_REQUEST_BYTES }>(body)?.into(),
            3..=5 => decode_within::<SyncRequestV3, { 2 * MAX_SYNC_REQUEST_BYTES }>(body)?.into(),
            _ => decode_within::<SyncRequest, { 2 * MAX_SYNC_REQUEST_BYTES }>(body)?,
        };
        if let Some(r) = request.resume
            && (r.from == 0 || r.to < r.from || r.to - r.from >= MAX_RESUME_SEQS)
        {
            return Err(WireError::TooMany {
                what: "change sets to resume (or an empty range)",
                limit: MAX_RESUME_SEQS as usize,
            });
        }
        if request.device_id != self.device_id() || request.counter != self.counter() {
            return Err(WireError::Decode("the body does not match its header".into()));
        }
        if request.change_sets.len() > MAX_CHANGE_SETS_PER_REQUEST {
            return Err(WireError::TooMany {
                what: "change sets in one request",
                limit: MAX_CHANGE_SETS_PER_REQUEST,
            });
        }
        if request.evidence.len() > MAX_EVIDENCE_PER_REQUEST {
            return Err(WireError::TooMany {
                what: "KIdC proofs in one request",
                limit: MAX_EVIDENCE_PER_REQUEST,
            });
        }
        Ok(request)
    }
}

/// The signed [`RequestHeader`] for `body`, followed by `body`.
fn seal_request_frame(key: &SigningKey, device_id: [u8; 16], counter: u64, body: &[u8]) -> Vec<u8> {
    seal_request_frame_in(SYNC_VERSION, key, device_id, counter, body)
}

fn seal_request_frame_in(
    version: u8,
    key: &SigningKey,
    device_id: [u8; 16],
    counter: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + body.len());
    out.push(version);
    out.extend_from_slice(&device_id);
    out.extend_from_slice(&counter.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(body));
    let sig = key.sign(&signed_message(REQUEST_DOMAIN, &out, &[]));
    out.extend_from_slice(&sig.to_bytes());
    out.extend_from_slice(body);
    out
}

impl SyncRequest {
    /// Encodes and signs: the [`RequestHeader`], then the bincode body.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, WireError> {
        let body = bincode::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| WireError::Encode(e.to_string()))?;
        Ok(seal_request_frame(key, self.device_id, self.counter, &body))
    }

    /// Seals in version 2, as tablets of that version did (without
    /// `evidence`): for tests that old tablets keep working.
    #[doc(hidden)]
    pub fn seal_version_2(&self, key: &SigningKey) -> Result<Vec<u8>, WireError> {
        let v2 = SyncRequestV2 {
            device_id: self.device_id,
            counter: self.counter,
            cursor: self.cursor,
            device_clock_ms: self.device_clock_ms,
            change_sets: self.change_sets.clone(),
        };
        let body = bincode::encode_to_vec(&v2, bincode::config::standard())
            .map_err(|e| WireError::Encode(e.to_string()))?;
        Ok(seal_request_frame_in(2, key, self.device_id, self.counter, &body))
    }

    /// Seals in version 5, as tablets of versions 3 to 5 did (without
    /// `resume`): for tests that those tablets keep working.
    #[doc(hidden)]
    pub fn seal_version_5(&self, key: &SigningKey) -> Result<Vec<u8>, WireError> {
        let v3 = SyncRequestV3 {
            device_id: self.device_id,
            counter: self.counter,
            cursor: self.cursor,
            device_clock_ms: self.device_clock_ms,
            change_sets: self.change_sets.clone(),
            evidence: self.evidence.clone(),
            lineage: self.lineage,
            adopted: self.adopted,
        };
        let body = bincode::encode_to_vec(&v3, bincode::config::standard())
            .map_err(|e| WireError::Encode(e.to_string()))?;
        Ok(seal_request_frame_in(5, key, self.device_id, self.counter, &body))
    }

    /// Verifies a whole sealed request with the device's key and decodes
    /// it within limits.
    pub fn open(bytes: &[u8], key: &VerifyingKey) -> Result<SyncRequest, WireError> {
        let (header, body) = Self::split(bytes)?;
        header.verify(key)?;
        header.open_body(body)
    }

    /// Reads a sealed request without checking its signature (for tools
    /// that count bytes, and for fuzzing). The body must still match the
    /// header's length and hash.
    pub fn decode_unverified(bytes: &[u8]) -> Result<SyncRequest, WireError> {
        let (header, body) = Self::split(bytes)?;
        header.open_body(body)
    }

    fn split(bytes: &[u8]) -> Result<(RequestHeader, &[u8]), WireError> {
        if bytes.len() > MAX_SYNC_REQUEST_BYTES {
            return Err(WireError::TooLarge {
                limit: MAX_SYNC_REQUEST_BYTES,
            });
        }
        let header = RequestHeader::parse(bytes)?;
        Ok((header, &bytes[REQUEST_HEADER_LEN..]))
    }
}

/// The hash that binds a response to its request.
pub fn request_hash(bytes: &[u8]) -> Hash {
    Sha256::digest(bytes).into()
}

/// What became of one change set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum AckOutcome {
    /// Applied now.
    Applied,
    /// Applied earlier; this resend changed nothing.
    AlreadyApplied,
    /// Set aside by an operator (the device was stuck behind it): kept as
    /// evidence, nothing of it applied; its records are set aside for good
    /// (sync format 3; a format-2 answer says `AlreadyApplied`).
    SetAside,
}

/// The acknowledgement of one change set.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Ack {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash, as the server computed it.
    pub hash: Hash,
    /// What happened.
    pub outcome: AckOutcome,
}

/// Why the server refused a change set. Codes are stable strings
/// ([`RefusalCode::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The bytes do not frame, decompress or decode.
    Malformed,
    /// The signature does not verify with the device's enrolled key.
    BadSignature,
    /// The change set was signed by another device than the requester.
    WrongDevice,
    /// The sequence number is not the next one; see `expected_seq`.
    SequenceGap,
    /// The previous-hash link does not match the last applied change set.
    HashChainMismatch,
    /// A record lies outside the device's office.
    OutOfScope,
    /// A server-owned field was written.
    ServerOwnedField,
    /// A record breaks the document layout, the workflow or validation.
    InvalidRecord,
    /// Larger than the limits.
    TooLarge,
    /// Another copy of this store took over the device's chain: this copy
    /// may not sync (version 3 only).
    ClonedStore,
}

impl RefusalCode {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::Malformed => "malformed",
            RefusalCode::BadSignature => "bad_signature",
            RefusalCode::WrongDevice => "wrong_device",
            RefusalCode::SequenceGap => "sequence_gap",
            RefusalCode::HashChainMismatch => "hash_chain_mismatch",
            RefusalCode::OutOfScope => "out_of_scope",
            RefusalCode::ServerOwnedField => "server_owned_field",
            RefusalCode::InvalidRecord => "invalid_record",
            RefusalCode::TooLarge => "too_large",
            RefusalCode::ClonedStore => "cloned_store",
        }
    }
}

/// A refused change set. Processing stops at the first refusal.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Refusal {
    /// The sequence number of the refused change set.
    pub seq: u64,
    /// Why.
    pub code: RefusalCode,
    /// For a sequence gap: the number the server expects next. A tablet
    /// resends from there (its change sets are kept after acknowledgement,
    /// so a server restored from backup can ask for the missing ones).
    pub expected_seq: Option<u64>,
    /// A message for operators. No personal data.
    pub message: String,
}

/// The server's changes to one record.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RecordUpdate {
    /// The record's UUIDv7.
    pub record_id: [u8; 16],
    /// Raw automerge changes made by the server.
    pub changes: Vec<Vec<u8>>,
}

/// The server's answer to a [`SyncRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SyncResponse {
    /// SHA-256 of the request bytes this answers.
    pub request_hash: Hash,
    /// Server clock, ms since the epoch.
    pub server_time_ms: i64,
    /// One per change set processed, in order.
    pub acks: Vec<Ack>,
    /// The first refused change set, if any.
    pub refusal: Option<Refusal>,
    /// The next change set sequence number the server expects.
    pub next_seq: u64,
    /// Server changes since the request's cursor.
    pub updates: Vec<RecordUpdate>,
    /// The cursor to send next time.
    pub cursor: u64,
    /// More updates wait beyond this page.
    pub more: bool,
    /// For each record of `updates` that holds a KIdC, the server's proof
    /// of it, for the tablet to keep.
    pub issuances: Vec<IssuanceProof>,
    /// The device's chain position once this request was applied. A
    /// tablet whose own chain disagrees (it lost its last commit, or runs
    /// from an old copy of its store) adopts it.
    pub chain: ChainPosition,
    /// Version 4: the birth and death notifications of the device's office
    /// not registered yet (health facilities and courts send them), oldest
    /// first, at most [`MAX_PENDING_NOTIFICATIONS`]. The tablet keeps this
    /// list as the office's current one.
    pub notifications: Vec<PendingNotification>,
    /// Version 5: the office's roster and rejection codes, as the server
    /// holds them now. The tablet keeps the newest it has seen.
    pub directory: Option<crate::staff::OfficeDirectory>,
}

/// At most this many pending notifications go with one answer.
pub const MAX_PENDING_NOTIFICATIONS: usize = 200;

/// A notification of a birth or a death, waiting for its registration.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PendingNotification {
    /// The server's id of it (a UUIDv7).
    pub notification_id: [u8; 16],
    /// `birth` or `death`.
    pub kind: String,
    /// When the server received it, ms since the epoch.
    pub received_at_ms: i64,
    /// The notification as the server validated it, JSON (names, dates:
    /// personal data; the tablet keeps it sealed).
    pub payload: String,
}

impl SyncResponse {
    /// Encodes, compresses and signs with the server key, in this build's
    /// version.
    pub fn seal(&self, key: &SigningKey) -> Result<Vec<u8>, WireError> {
        self.seal_for(SYNC_VERSION, key)
    }

    /// [`SyncResponse::seal`] in the version of the request it answers
    /// (a version-2 answer carries no `issuances`).
    pub fn seal_for(&self, version: u8, key: &SigningKey) -> Result<Vec<u8>, WireError> {
        let body = if version == 2 {
            let v2 = SyncResponseV2 {
                request_hash: self.request_hash,
                server_time_ms: self.server_time_ms,
                acks: self
                    .acks
                    .iter()
                    .map(|a| Ack {
                        outcome: match a.outcome {
                            AckOutcome::SetAside => AckOutcome::AlreadyApplied,
                            other => other,
                        },
                        ..a.clone()
                    })
                    .collect(),
                refusal: self.refusal.clone(),
                next_seq: self.next_seq,
                updates: self.updates.clone(),
                cursor: self.cursor,
                more: self.more,
            };
            bincode::encode_to_vec(&v2, bincode::config::standard())
        } else if version == 3 {
            let v3 = SyncResponseV3 {
                request_hash: self.request_hash,
                server_time_ms: self.server_time_ms,
                acks: self.acks.clone(),
                refusal: self.refusal.clone(),
                next_seq: self.next_seq,
                updates: self.updates.clone(),
                cursor: self.cursor,
                more: self.more,
                issuances: self.issuances.clone(),
                chain: self.chain,
            };
            bincode::encode_to_vec(&v3, bincode::config::standard())
        } else if version == 4 {
            let v4 = SyncResponseV4 {
                request_hash: self.request_hash,
                server_time_ms: self.server_time_ms,
                acks: self.acks.clone(),
                refusal: self.refusal.clone(),
                next_seq: self.next_seq,
                updates: self.updates.clone(),
                cursor: self.cursor,
                more: self.more,
                issuances: self.issuances.clone(),
                chain: self.chain,
                notifications: self.notifications.clone(),
            };
            bincode::encode_to_vec(&v4, bincode::config::standard())
        } else if (5..=SYNC_VERSION).contains(&version) {
            // Version 6 changed the request only.
            bincode::encode_to_vec(self, bincode::config::standard())
        } else {
            return Err(WireError::UnsupportedVersion(version));
        }
        .map_err(|e| WireError::Encode(e.to_string()))?;
        let compressed = zstd::bulk::compress(&body, 3).map_err(|e| WireError::Encode(e.to_string()))?;
        Ok(seal_frame(key, RESPONSE_DOMAIN, version, &compressed))
    }

    /// Verifies with the pinned server key, then decodes within limits.
    pub fn open(bytes: &[u8], server_key: &VerifyingKey) -> Result<SyncResponse, WireError> {
        let (version, sig, body) = split_frame(bytes)?;
        verify_frame(server_key, RESPONSE_DOMAIN, version, sig, body)?;
        let decoded = decompress_limited(body, MAX_SYNC_RESPONSE_DECODED)?;
        if version == 2 {
            let v2: SyncResponseV2 = decode_limited(&decoded)?;
            return Ok(SyncResponse {
                request_hash: v2.request_hash,
                server_time_ms: v2.server_time_ms,
                acks: v2.acks,
                refusal: v2.refusal,
                next_seq: v2.next_seq,
                updates: v2.updates,
                cursor: v2.cursor,
                more: v2.more,
                issuances: Vec::new(),
                chain: ChainPosition {
                    seq: v2.next_seq.saturating_sub(1),
                    hash: [0; 32],
                },
                notifications: Vec::new(),
                directory: None,
            });
        }
        if version == 3 {
            let v3: SyncResponseV3 = decode_limited(&decoded)?;
            return Ok(SyncResponse {
                request_hash: v3.request_hash,
                server_time_ms: v3.server_time_ms,
                acks: v3.acks,
                refusal: v3.refusal,
                next_seq: v3.next_seq,
                updates: v3.updates,
                cursor: v3.cursor,
                more: v3.more,
                issuances: v3.issuances,
                chain: v3.chain,
                notifications: Vec::new(),
                directory: None,
            });
        }
        if version == 4 {
            let v4: SyncResponseV4 = decode_limited(&decoded)?;
            return Ok(SyncResponse {
                request_hash: v4.request_hash,
                server_time_ms: v4.server_time_ms,
                acks: v4.acks,
                refusal: v4.refusal,
                next_seq: v4.next_seq,
                updates: v4.updates,
                cursor: v4.cursor,
                more: v4.more,
                issuances: v4.issuances,
                chain: v4.chain,
                notifications: v4.notifications,
                directory: None,
            });
        }
        let response: SyncResponse = decode_limited(&decoded)?;
        if let Some(d) = &response.directory {
            check_directory(d)?;
        }
        Ok(response)
    }
}

/// A version-4 answer: [`SyncResponse`] without `directory`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct SyncResponseV4 {
    request_hash: Hash,
    server_time_ms: i64,
    acks: Vec<Ack>,
    refusal: Option<Refusal>,
    next_seq: u64,
    updates: Vec<RecordUpdate>,
    cursor: u64,
    more: bool,
    issuances: Vec<IssuanceProof>,
    chain: ChainPosition,
    notifications: Vec<PendingNotification>,
}

/// The signing domain of an office directory sent with an enrolment.
const DIRECTORY_DOMAIN: &[u8] = b"crvs/office-directory/v1\0";
/// The frame version of a sealed office directory: the sync format that
/// brought it (frames share one version range).
const DIRECTORY_VERSION: u8 = 5;

fn check_directory(d: &crate::staff::OfficeDirectory) -> Result<(), WireError> {
    if d.staff.len() > crate::staff::MAX_ROSTER_MEMBERS {
        return Err(WireError::TooMany {
            what: "roster members",
            limit: crate::staff::MAX_ROSTER_MEMBERS,
        });
    }
    if d.rejection_codes.len() > crate::staff::MAX_REJECTION_CODES {
        return Err(WireError::TooMany {
            what: "rejection codes",
            limit: crate::staff::MAX_REJECTION_CODES,
        });
    }
    if d.staff
        .iter()
        .any(|m| crate::staff::Roles::from_bits(m.roles).is_none())
    {
        return Err(WireError::Decode("a roster member holds an unknown role".into()));
    }
    Ok(())
}

/// Seals an office directory with the server key, for the enrolment's
/// answer (the sync answer is signed as a whole).
pub fn seal_directory(d: &crate::staff::OfficeDirectory, key: &SigningKey) -> Result<Vec<u8>, WireError> {
    let body = bincode::encode_to_vec(d, bincode::config::standard())
        .map_err(|e| WireError::Encode(e.to_string()))?;
    let compressed = zstd::bulk::compress(&body, 3).map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(seal_frame(key, DIRECTORY_DOMAIN, DIRECTORY_VERSION, &compressed))
}

/// Verifies a sealed office directory with the pinned server key, then
/// decodes it within limits.
pub fn open_directory(
    bytes: &[u8],
    server_key: &VerifyingKey,
) -> Result<crate::staff::OfficeDirectory, WireError> {
    let (version, sig, body) = split_frame(bytes)?;
    if version != DIRECTORY_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    verify_frame(server_key, DIRECTORY_DOMAIN, version, sig, body)?;
    let decoded = decompress_limited(body, MAX_SYNC_RESPONSE_DECODED)?;
    let d: crate::staff::OfficeDirectory = decode_limited(&decoded)?;
    check_directory(&d)?;
    Ok(d)
}

/// A version-3 answer: [`SyncResponse`] without `notifications`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct SyncResponseV3 {
    request_hash: Hash,
    server_time_ms: i64,
    acks: Vec<Ack>,
    refusal: Option<Refusal>,
    next_seq: u64,
    updates: Vec<RecordUpdate>,
    cursor: u64,
    more: bool,
    issuances: Vec<IssuanceProof>,
    chain: ChainPosition,
}

/// A version-2 answer: [`SyncResponse`] without `issuances`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
struct SyncResponseV2 {
    request_hash: Hash,
    server_time_ms: i64,
    acks: Vec<Ack>,
    refusal: Option<Refusal>,
    next_seq: u64,
    updates: Vec<RecordUpdate>,
    cursor: u64,
    more: bool,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// A stable code.
    pub error: String,
    /// A message for people. No personal data.
    pub message: String,
    /// With `replayed_request`: the last request counter the server
    /// accepted from the device. A tablet restored from a backup of its
    /// store continues above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_counter: Option<u64>,
}

/// The HTTP header that carries the protocol version on sync requests.
pub const PROTOCOL_HEADER: &str = "x-crvs-protocol";

/// Fuzzing only: frames and signs arbitrary `payload` bytes as a change
/// set with the given version byte, so that a fuzzer reaches the
/// decompressor and the decoder behind the signature.
#[doc(hidden)]
pub fn fuzz_seal_change_set_payload(
    key: &SigningKey,
    version: u8,
    device_id: [u8; 16],
    seq: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut bytes = vec![version];
    bytes.extend_from_slice(&device_id);
    bytes.extend_from_slice(&seq.to_le_bytes());
    let sig = key.sign(&signed_message(CHANGE_SET_DOMAIN, &bytes, payload));
    bytes.extend_from_slice(&sig.to_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Fuzzing only: frames and signs arbitrary `body` bytes as a sync
/// request.
#[doc(hidden)]
pub fn fuzz_seal_request_body(key: &SigningKey, body: &[u8]) -> Vec<u8> {
    // The header names the device and counter the body names, when it
    // decodes, so that a body the fuzzer gets right opens all the way.
    let (device_id, counter) = decode_within::<SyncRequest, { 2 * MAX_SYNC_REQUEST_BYTES }>(body)
        .map_or(([0; 16], 0), |r| (r.device_id, r.counter));
    seal_request_frame(key, device_id, counter, body)
}

/// Fuzzing only: frames and signs arbitrary (compressed) `body` bytes as a
/// sync response.
#[doc(hidden)]
pub fn fuzz_seal_response_body(key: &SigningKey, body: &[u8]) -> Vec<u8> {
    seal_frame(key, RESPONSE_DOMAIN, SYNC_VERSION, body)
}
