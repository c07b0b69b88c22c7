//! Before the writer: the request's change sets framed, verified and
//! decoded, and the records they create prepared, on all cores.

use std::collections::HashMap;

use crvs_schema::Kidc;
use crvs_schema::evidence::IssuanceProof;
use crvs_schema::record::{self};
use crvs_schema::wire::{self, ChangeSet, Hash, RecordChanges, RefusalCode, SignedChangeSet, WireError};
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;

use super::prepare::{Prepared, prepare_record};
use super::{Ctx, Step, par_map, refuse};

/// The codes of `proofs` that the server's key signed, by record. A proof
/// that does not verify is ignored (it proves nothing) and counted.
pub(super) fn verified_evidence(
    server: &Server,
    proofs: &[IssuanceProof],
    device_id: Uuid,
) -> HashMap<[u8; 16], Kidc> {
    let key = server.signing_key().verifying_key();
    let mut out = HashMap::with_capacity(proofs.len());
    let mut bad = 0usize;
    for p in proofs {
        match p.verify(&key) {
            Ok(k) => {
                out.insert(p.record_id, k);
            }
            Err(_) => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(device = %device_id, bad, "KIdC proofs that this server did not sign were ignored");
    }
    out
}

/// The sequence number in a change set's header, if the bytes are long
/// enough to hold one (for refusing bytes that do not frame).
pub(super) fn peek_seq(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(17..25)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

pub(super) fn wire_refusal(seq: u64, e: &WireError) -> Step {
    match e {
        WireError::TooLarge { .. } | WireError::TooMany { .. } => {
            refuse(seq, RefusalCode::TooLarge, e.to_string())
        }
        WireError::BadSignature => refuse(
            seq,
            RefusalCode::BadSignature,
            "the change set's signature does not verify with the device's enrolled key",
        ),
        other => refuse(seq, RefusalCode::Malformed, other.to_string()),
    }
}

/// A change set as decoded before the writer was taken.
pub(super) enum Incoming {
    /// The request's decompression budget ran out before this change set:
    /// it and those after it are left for the tablet's next request (no
    /// refusal: alone it may well fit).
    Deferred,
    /// The bytes do not frame as a change set.
    Unframed {
        error: WireError,
        /// The sequence number in the header, if there is one.
        claimed: Option<u64>,
    },
    Framed {
        cs: SignedChangeSet,
        /// Its signature checked and its body decoded, if it looked new
        /// (sequence past the device's last, as read before the writer);
        /// otherwise that is done, if needed, under the writer.
        opened: Option<Result<OpenedBody, WireError>>,
    },
}

/// A decoded change set body, with the records it creates prepared.
pub(super) struct OpenedBody {
    pub(super) prev_hash: Hash,
    pub(super) records: Vec<Pending>,
}

impl From<ChangeSet> for OpenedBody {
    fn from(body: ChangeSet) -> Self {
        OpenedBody {
            prev_hash: body.prev_hash,
            records: body
                .records
                .into_iter()
                .map(|rc| Pending { rc, early: None })
                .collect(),
        }
    }
}

/// One record's changes, and what was prepared of them before the writer.
pub(super) struct Pending {
    pub(super) rc: RecordChanges,
    /// For a record sent as one document chunk (one the tablet never sent
    /// before): prepared as a new record. Used only if the record is still
    /// absent under the writer.
    pub(super) early: Option<Result<Option<Prepared>, Step>>,
}

/// Frames, verifies and decodes the change sets of a request, and prepares
/// the records they create, on all cores. Pure: nothing here depends on
/// state that the writer could change, except which change sets are new,
/// which the writer checks again.
pub(super) fn open_change_sets(ctx: &Ctx<'_>, change_sets: Vec<Vec<u8>>) -> Result<Vec<Incoming>, ApiError> {
    // All change sets of the request draw their decompressed bytes from
    // one budget: many small bombs cannot add up.
    let mut budget = wire::MAX_REQUEST_DECODED;
    let mut out: Vec<Incoming> = change_sets
        .into_iter()
        .map(|bytes| {
            let claimed = peek_seq(&bytes);
            match SignedChangeSet::from_bytes(bytes) {
                Err(error) => Incoming::Unframed { error, claimed },
                Ok(cs) => {
                    let new =
                        cs.device_id() == *ctx.device.device_id.as_bytes() && cs.seq() > ctx.device.last_seq;
                    let shared = budget < wire::MAX_CHANGE_SET_DECODED;
                    match new.then(|| cs.open_within(ctx.key, &mut budget)) {
                        // It would fit alone: it waits for the next request
                        // instead of being refused for good.
                        Some(Err(WireError::TooLarge { .. })) if shared => Incoming::Deferred,
                        opened => Incoming::Framed {
                            cs,
                            opened: opened.map(|r| r.map(OpenedBody::from)),
                        },
                    }
                }
            }
        })
        .collect();
    // Every record sent as one document chunk, across the change sets.
    let mut jobs = Vec::new();
    for (i, inc) in out.iter().enumerate() {
        if let Incoming::Framed {
            cs,
            opened: Some(Ok(body)),
        } = inc
        {
            for (j, p) in body.records.iter().enumerate() {
                if let [chunk] = p.rc.changes.as_slice()
                    && record::is_document_chunk(chunk)
                {
                    jobs.push((i, j, cs.seq(), p.rc.clone()));
                }
            }
        }
    }
    let results = par_map(jobs, |(i, j, seq, rc)| (i, j, prepare_record(ctx, seq, rc, None)))
        .ok_or_else(|| ApiError::Internal("a record worker panicked".into()))?;
    for (i, j, prepared) in results {
        if let Incoming::Framed {
            opened: Some(Ok(body)),
            ..
        } = &mut out[i]
        {
            body.records[j].early = Some(prepared);
        }
    }
    Ok(out)
}
