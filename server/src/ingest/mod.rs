//! Sync ingest: one sync request in, one signed answer out.
//!
//! The logic is written once against [`WriteTx`], so it runs unchanged on
//! every storage backend. One request is one write transaction (one fsync
//! at commit); inside it each change set runs under its own savepoint, so a
//! refused change set undoes only itself and the acknowledgements before it
//! stand.
//!
//! For each change set, in order (`apply_change_set`):
//!
//! 1. framing (`SignedChangeSet::from_bytes`) → `malformed` / `too_large`;
//! 2. the header's device must be the requester → `wrong_device`;
//! 3. `seq <= last_seq` is a resend: the same hash as logged is
//!    acknowledged `AlreadyApplied` and changes nothing; another hash is a
//!    `hash_chain_mismatch`;
//! 4. `seq > last_seq + 1` → `sequence_gap` with the expected number;
//! 5. the signature, with the device's enrolled key → `bad_signature`;
//! 6. `prev_hash` must be the last applied hash → `hash_chain_mismatch`;
//! 7. each record (`prepare_record`): changes decode (`malformed`), none
//!    is signed with the server's actor (`server_owned_field`), the tablet
//!    only wrote tablet-owned fields and kept the workflow valid
//!    (`server_owned_field` / `invalid_record`), the record lies in the
//!    device's office (`out_of_scope`; any tablet of the office may
//!    continue a record of the office);
//! 8. the server's own part, with the server's actor, only when it has
//!    something to say: a hold when the event's data does not validate
//!    against the *server's* date and the record's office (for a birth
//!    `birth::validate_at_office`: a residence outside the commune
//!    without `registered_away_from_residence`), when its workflow breaks
//!    the rules or its data is in conflict — never a refusal: that would
//!    block the tablet's outbox forever; and for an approved record
//!    without a hold, its registration (`register`: the registry's
//!    checks, a birth's KIdC, the registration number);
//! 9. the signed bytes go verbatim into the append-only change-set log and
//!    the device's chain advances.
//!
//! **Before the writer.** Steps 1, 5 and the whole of 7 and 8 for a record
//! sent as one document chunk (a record the tablet never sent before) are
//! pure, so `open_change_sets` does them before the single writer is
//! taken, on all cores. Under the writer everything that depends on state
//! is read again (revocation, the chain position, whether each record is
//! still absent); work done early is used only if it still holds, and
//! redone there otherwise.
//!
//! **KIdC category:** [`Category::CITIZEN`] when the mother's or the
//! father's nationality is `"KHM"`, otherwise [`Category::FOREIGN_RESIDENT`].
//!
//! **Architecture invariant:** a KIdC is issued in the same transaction as
//! the record change that receives it, after an `INSERT` into the issuance
//! log whose unique keys (code, record) make a second code for one record,
//! or one code for two records, impossible; and the answer leaves only
//! after that transaction committed.

use std::collections::HashMap;

use crvs_schema::evidence::IssuanceProof;
use crvs_schema::wire::{
    self, AckOutcome, Hash, REQUEST_HEADER_LEN, Refusal, RefusalCode, RequestHeader, WireError,
};
use crvs_schema::{Date, Kidc};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::ledger::Reservations;
use crate::storage::{Device, StorageError};

mod apply;
mod kidc;
mod open;
mod prepare;
mod register;
mod release;
mod write;

use open::{open_change_sets, verified_evidence};
pub use prepare::{MAX_CHUNKS_PER_RECORD, MAX_RECORD_DOC_BYTES};
pub use register::{HOLD_NOT_REGISTERED, HOLD_UNKNOWN_RECORD};
pub use release::{Released, release_hold};
pub(crate) use write::{Job, Written};
use write::{settle_group, write_group};

/// A device clock further than this from the server's is flagged.
pub const CLOCK_TOLERANCE_MS: u64 = 24 * 3600 * 1000;
/// At most this many server changes per answer; `more` says if others wait.
pub const FEED_PAGE: usize = 1000;
/// The hold code of a record whose data does not validate on receipt.
pub const HOLD_INVALID_ON_RECEIPT: &str = "invalid_on_receipt";
/// The issuance-log reason of a KIdC given to an approved birth.
pub const REASON_BIRTH_APPROVED: &str = "birth_approved";
/// The issuance-log reason of a code issued before a restore from backup
/// and recorded again: from the tablet's signed evidence, or from the
/// ledger's reservation.
pub const REASON_RECORDED_AGAIN: &str = "birth_approved_recorded_again";
/// The hold code of an approved birth whose earlier code cannot be
/// recorded again without giving one code to two records (the evidence
/// and the ledger disagree, or the code went to another record). An
/// operator must look: no code is issued meanwhile.
pub const HOLD_KIDC_CONFLICT: &str = "kidc_conflict";
/// The hold code of a record whose workflow breaks the rules (a verifier
/// who is the clerk, an approval before verification, ...): a content
/// problem, so the record is held and the rest of its change set applies.
pub const HOLD_INVALID_WORKFLOW: &str = "invalid_workflow";
/// The hold code of a record whose data two tablets of the office wrote
/// concurrently: both values are kept until a person settles it.
pub const HOLD_DATA_CONFLICT: &str = "data_conflict";
/// The hold code of a record with a workflow step the office's roster
/// does not allow: its staff member was not on the roster at the step's
/// time, did not hold the role the step needs, or gave a rejection code
/// the server does not list. Nothing is registered until an operator
/// looks; the change set is not refused, so a tablet that acted before it
/// heard of a roster change is not blocked and loses nothing.
pub const HOLD_STAFF_NOT_AUTHORIZED: &str = "staff_not_authorized";
/// Draws of a KIdC before giving up (a collision is one in ~10⁸ per draw
/// while the space is nearly empty).
const MAX_KIDC_DRAWS: usize = 64;
/// A stored document larger than this is compacted (`save()`) instead of
/// having change chunks appended.
const COMPACT_ABOVE: usize = 64 * 1024;

/// Why processing of one change set stopped.
#[derive(Debug)]
enum Step {
    /// The change set is refused; nothing of it is kept.
    Refused(Refusal),
    /// The server failed; the whole request fails and nothing is kept.
    Failed(ApiError),
    /// Not processed in this request (see [`Incoming::Deferred`]).
    Deferred,
}

impl From<StorageError> for Step {
    fn from(e: StorageError) -> Self {
        Step::Failed(e.into())
    }
}

fn refuse(seq: u64, code: RefusalCode, message: impl Into<String>) -> Step {
    Step::Refused(Refusal {
        seq,
        code,
        expected_seq: None,
        message: message.into(),
    })
}

fn internal(what: impl Into<String>) -> Step {
    Step::Failed(ApiError::Internal(what.into()))
}

/// The device's position in its hash chain.
#[derive(Debug, Clone, Copy)]
struct Chain {
    last_seq: u64,
    last_hash: Hash,
}

/// What one request needs to know while applying change sets.
struct Ctx<'a> {
    server: &'a Server,
    device: &'a Device,
    key: &'a VerifyingKey,
    now_ms: i64,
    today: Date,
    /// Codes the tablet proved the server issued, by record id (only
    /// proofs that verify with the server's key).
    evidence: &'a HashMap<[u8; 16], Kidc>,
    /// The office's staff history, against which each new workflow step
    /// is checked once the roster is in force.
    roster: &'a crate::staff::RosterHistory,
}

/// Counters for the request's log line (no personal data).
#[derive(Debug, Default)]
struct Stats {
    records: usize,
    kidcs: usize,
    holds: usize,
    /// Codes recorded again from evidence or from the ledger.
    recorded_again: usize,
    /// Registration numbers given back from the ledger.
    numbers_again: usize,
    /// Codes written to the issuance log, for the metrics (new ones,
    /// recorded again), of the change sets applied: a change set rolled
    /// back takes its own back (`apply::apply_change_set`).
    issued: Issued,
    /// Codes and registration numbers issued by this request, to reserve
    /// in the ledger before it commits. Codes of a change set rolled back
    /// stay in it: reserving one too many is harmless, the record gets the
    /// same one next time. Its numbers do not (`write_request` drops
    /// them): the database's counter went back with the change set, so the
    /// next record could be counted to the same number.
    reserve: Reservations,
}

/// Codes written to the issuance log by a request.
#[derive(Debug, Default, Clone, Copy)]
struct Issued {
    /// New codes (`birth_approved`).
    new: usize,
    /// Codes issued before a restore, recorded again.
    again: usize,
}

/// Authenticates a sync request from its header alone: the device is
/// enrolled and not revoked, the header's signature verifies with its key,
/// and the counter is above the last one accepted (read without the
/// writer). The HTTP layer calls this before it reads the body, so a
/// stranger or a replay never gets a body buffered, let alone the writer.
pub fn authenticate(server: &Server, header: &RequestHeader) -> Result<(Device, VerifyingKey), ApiError> {
    let device_id = Uuid::from_bytes(header.device_id());
    let device = server
        .storage()
        .device(device_id)?
        .ok_or(ApiError::UnknownDevice)?;
    if device.revoked_at_ms.is_some() {
        return Err(ApiError::DeviceRevoked);
    }
    let key = VerifyingKey::from_bytes(&device.public_key)
        .map_err(|_| ApiError::Internal("a stored device key is invalid".into()))?;
    header.verify(&key).map_err(|_| ApiError::BadRequestSignature)?;
    if header.counter() <= device.last_request_counter {
        return Err(replayed(&device, header.counter()));
    }
    if header.body_len() > (wire::MAX_SYNC_REQUEST_BYTES - REQUEST_HEADER_LEN) as u64 {
        return Err(ApiError::TooLarge(wire::MAX_SYNC_REQUEST_BYTES));
    }
    Ok((device, key))
}

fn replayed(device: &Device, counter: u64) -> ApiError {
    tracing::warn!(
        device = %device.device_id,
        counter,
        last_counter = device.last_request_counter,
        "sync request refused: its counter is not above the last accepted one (a replay, or a restored tablet)"
    );
    ApiError::ReplayedRequest {
        last_counter: device.last_request_counter,
    }
}

/// Handles one sync request. See the module documentation.
pub fn handle_sync(server: &Server, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    if body.len() > wire::MAX_SYNC_REQUEST_BYTES {
        return Err(ApiError::TooLarge(wire::MAX_SYNC_REQUEST_BYTES));
    }
    let header = RequestHeader::parse(body).map_err(ApiError::from_wire)?;
    let now_ms = server.now_ms();
    // The latest date a record may carry: the server's date, plus the day
    // of clock difference tolerated (a birth "tomorrow" by the server's
    // clock is a tablet a few hours ahead, not a problem).
    let today = Date::today_in_cambodia(now_ms.saturating_add(CLOCK_TOLERANCE_MS as i64));

    // Before the writer: authenticate, check signatures, decode, and
    // prepare the records the change sets create. This is most of the
    // work; other requests commit meanwhile, and a forged or replayed
    // request never holds the writer.
    let (seen, key) = authenticate(server, &header)?;
    let device_id = seen.device_id;
    let office = seen.office.clone();
    let request = header
        .open_body(&body[REQUEST_HEADER_LEN..])
        .map_err(|e| match e {
            WireError::BadSignature => ApiError::BadRequestSignature,
            other => ApiError::from_wire(other),
        })?;
    let evidence = verified_evidence(server, &request.evidence, device_id);
    let roster = crate::staff::RosterHistory::load(server.storage(), &seen.office)?;
    let early = Ctx {
        server,
        device: &seen,
        key: &key,
        now_ms,
        today,
        evidence: &evidence,
        roster: &roster,
    };
    let incoming = open_change_sets(&early, request.change_sets)?;
    crate::fault::point("after_decode");

    // Under the writer, in a commit group with the other requests that
    // reach it meanwhile (`crate::group_commit`): the result comes back
    // after the group's commit.
    let job = Job {
        seen,
        key,
        now_ms,
        today,
        evidence,
        roster,
        incoming,
        device_clock_ms: request.device_clock_ms,
        counter: request.counter,
        lineage: request.lineage,
        adopted: request.adopted,
        cursor: request.cursor,
        resume: request.resume,
        report: request.report.filter(|r| {
            let ok = r.version_is_well_formed();
            if !ok {
                // Dropped, not refused: a label must not block an outbox.
                tracing::warn!(device = %device_id, bytes = r.app_version.len(), "a tablet reported a malformed app version; its report is dropped");
            }
            ok
        }),
    };
    let written = server.write_group().run(
        job,
        |jobs| write_group(server, jobs),
        |results| settle_group(server, results),
        || Err(ApiError::Internal("the commit group failed".into())),
    )?;

    // After the commit: sign the proofs and the answer, off the writer.
    let Written {
        mut response,
        proofs,
        stats,
    } = written;
    response.request_hash = wire::request_hash(body);
    if header.version() >= 4 {
        response.notifications = pending_notifications(server, &office)?;
    }
    if header.version() >= 5 {
        response.directory = Some(crate::staff::directory(server.storage(), &office)?);
    }
    // One signature per code, on every core: a backlog's answer carries
    // a thousand.
    response.issuances = par_map(proofs, |(record_id, k)| {
        IssuanceProof::sign(server.signing_key(), record_id, &k)
    })
    .ok_or_else(|| ApiError::Internal("signing the issuance proofs failed".into()))?;
    if let Some(stats) = stats {
        let applied = response
            .acks
            .iter()
            .filter(|a| a.outcome == AckOutcome::Applied)
            .count();
        // Committed (the group's commit returned): counted now, so that a
        // request rolled back or failed counts nothing.
        crate::metrics::count_sync(
            applied,
            response.refusal.as_ref().map(|r| r.code.as_str()),
            stats.issued.new,
            stats.issued.again,
        );
        tracing::info!(
            device = %device_id,
            applied,
            resent = response.acks.len() - applied,
            refused = response.refusal.as_ref().map(|r| r.code.as_str()),
            records = stats.records,
            kidcs = stats.kidcs,
            recorded_again = stats.recorded_again,
            numbers_again = stats.numbers_again,
            holds = stats.holds,
            updates = response.updates.len(),
            cursor = response.cursor,
            "sync"
        );
    }
    // In the request's version: a version-2 tablet reads a version-2 answer.
    response
        .seal_for(header.version(), server.signing_key())
        .map_err(|e| ApiError::Internal(format!("sealing the answer failed: {e}")))
}

/// The office's notifications not registered yet, oldest first, as a sync
/// answer carries them (read after the commit: one registered by this
/// request is not among them).
fn pending_notifications(server: &Server, office: &str) -> Result<Vec<wire::PendingNotification>, ApiError> {
    Ok(server
        .storage()
        .pending_notifications(office)?
        .into_iter()
        .take(wire::MAX_PENDING_NOTIFICATIONS)
        .map(|n| wire::PendingNotification {
            notification_id: n.notification_id.into_bytes(),
            kind: n.kind,
            received_at_ms: n.received_at_ms,
            payload: n.payload,
        })
        .collect())
}

/// [`crvs_schema::par::map`] from [`PARALLEL_FROM`] records; `None` if a
/// worker panicked.
fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Option<Vec<R>> {
    crvs_schema::par::map(items, PARALLEL_FROM, f).ok()
}

/// Process records on several threads from this many records on.
const PARALLEL_FROM: usize = 8;

#[cfg(test)]
mod tests {
    use super::apply::tablet_change_refusal;
    use super::open::{peek_seq, wire_refusal};
    use super::prepare::kidc_category;
    use super::*;
    use crvs_schema::birth;
    use crvs_schema::kidc::Category;
    use crvs_schema::record::TabletChangeError;

    #[test]
    fn the_sequence_number_is_read_from_a_header_only_when_present() {
        let mut bytes = vec![1u8; 17];
        assert_eq!(peek_seq(&bytes), None);
        bytes.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(peek_seq(&bytes), Some(7));
    }

    #[test]
    fn wire_errors_map_to_stable_refusal_codes() {
        let code = |e: WireError| match wire_refusal(3, &e) {
            Step::Refused(r) => r.code,
            Step::Failed(_) | Step::Deferred => panic!("a wire error is a refusal"),
        };
        assert_eq!(code(WireError::BadSignature), RefusalCode::BadSignature);
        assert_eq!(code(WireError::TooLarge { limit: 1 }), RefusalCode::TooLarge);
        assert_eq!(code(WireError::Truncated), RefusalCode::Malformed);
        assert_eq!(code(WireError::Decompress), RefusalCode::Malformed);
    }

    #[test]
    fn a_child_with_a_khmer_parent_is_a_citizen() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../../../fixtures/birth-sok-dara.json")).expect("fixture");
        let today = Date::today_in_cambodia(4_102_444_800_000);
        let mut reg = birth::validate(&json, today).expect("valid");
        assert_eq!(kidc_category(&reg), Category::CITIZEN);
        reg.mother.nationality = "THA".into();
        assert_eq!(kidc_category(&reg), Category::CITIZEN, "the father is Khmer");
        if let Some(f) = reg.father.as_mut() {
            f.nationality = "THA".into();
        }
        assert_eq!(kidc_category(&reg), Category::FOREIGN_RESIDENT);
    }

    #[test]
    fn tablet_change_errors_map_to_refusal_codes() {
        let code = |e| match tablet_change_refusal(1, e) {
            Step::Refused(r) => r.code,
            Step::Failed(_) | Step::Deferred => panic!("a refusal"),
        };
        assert_eq!(
            code(TabletChangeError::ServerOwnedField("server.kidc".into())),
            RefusalCode::ServerOwnedField
        );
        assert_eq!(
            code(TabletChangeError::UnknownRootField),
            RefusalCode::InvalidRecord
        );
        assert_eq!(
            code(TabletChangeError::TransitionsRewritten),
            RefusalCode::InvalidRecord
        );
    }
}
