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
//!    device's office and belongs to it (`out_of_scope`);
//! 8. the server's own part, with the server's actor, only when it has
//!    something to say: a hold when the birth data does not validate
//!    against the *server's* date and the record's office
//!    (`birth::validate_at_office`: a residence outside the commune
//!    without `registered_away_from_residence`) — never a refusal: that
//!    would block the tablet's outbox forever; and for an approved birth
//!    without a hold, its KIdC;
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

use std::collections::{HashMap, HashSet};

use automerge::{AutoCommit, Change, ChangeHash};
use crvs_schema::birth::{self, BirthRegistration};
use crvs_schema::bounds;
use crvs_schema::evidence::IssuanceProof;
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::kidc::Category;
use crvs_schema::record::{self, RecordKind, TabletChangeError};
use crvs_schema::wire::{
    self, Ack, AckOutcome, ChainPosition, ChangeSet, Hash, REQUEST_HEADER_LEN, RecordChanges, RecordUpdate,
    Refusal, RefusalCode, RequestHeader, SignedChangeSet, SyncResponse, WireError,
};
use crvs_schema::workflow::{self, Status};
use crvs_schema::{Date, Kidc};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::storage::{
    Device, DeviceRefusal, Issuance, LogEntry, ReleaseAudit, StorageError, StoredRecord, SyncSeen, WriteTx,
};

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
}

/// Counters for the request's log line (no personal data).
#[derive(Debug, Default)]
struct Stats {
    records: usize,
    kidcs: usize,
    holds: usize,
    /// Codes recorded again from evidence or from the ledger.
    recorded_again: usize,
    /// Codes issued by this request, to reserve in the ledger before it
    /// commits (codes of a change set rolled back stay in it: reserving
    /// one too many is harmless, the record gets the same one next time).
    reserve: Vec<(Kidc, Uuid)>,
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
    let request = header
        .open_body(&body[REQUEST_HEADER_LEN..])
        .map_err(|e| match e {
            WireError::BadSignature => ApiError::BadRequestSignature,
            other => ApiError::from_wire(other),
        })?;
    let evidence = verified_evidence(server, &request.evidence, device_id);
    let early = Ctx {
        server,
        device: &seen,
        key: &key,
        now_ms,
        today,
        evidence: &evidence,
    };
    let incoming = open_change_sets(&early, request.change_sets)?;
    crate::fault::point("after_decode");

    let mut tx = server.storage().begin()?;
    // Read again inside the write transaction, on every request: a
    // revocation takes effect from the device's next request, with no
    // cache; the chain position read here is the one that counts.
    let device = tx.device(device_id)?.ok_or(ApiError::UnknownDevice)?;
    if device.revoked_at_ms.is_some() {
        return Err(ApiError::DeviceRevoked);
    }
    if device.public_key != seen.public_key || device.office != seen.office {
        // Neither ever changes; what was prepared would not hold.
        return Err(ApiError::Internal("a device's key or office changed".into()));
    }

    let skew_ms = request.device_clock_ms.saturating_sub(now_ms);
    let flagged = skew_ms.unsigned_abs() > CLOCK_TOLERANCE_MS;
    // The counter is checked and advanced in one statement, under the
    // writer: of two copies of one request racing here, one wins and the
    // other is refused with nothing recorded (the transaction is dropped,
    // so rolled back).
    let fresh = tx.record_sync(
        device_id,
        &SyncSeen {
            at_ms: now_ms,
            device_clock_ms: request.device_clock_ms,
            skew_ms,
            flagged,
            counter: request.counter,
        },
    )?;
    if !fresh {
        return Err(replayed(&device, request.counter));
    }
    if flagged {
        tracing::warn!(device = %device_id, skew_ms, "device clock is off by more than a day");
    }
    if let Some(refused) = check_lineage(&mut *tx, &device, request.lineage, request.adopted, now_ms)? {
        // Another copy of this store: its counter is recorded (no replay
        // of it either), nothing else; no feed for it.
        tx.commit()?;
        let response = SyncResponse {
            request_hash: wire::request_hash(body),
            server_time_ms: now_ms,
            acks: Vec::new(),
            refusal: Some(refused),
            next_seq: device.last_seq.saturating_add(1),
            updates: Vec::new(),
            cursor: request.cursor,
            more: false,
            issuances: Vec::new(),
            chain: ChainPosition {
                seq: device.last_seq,
                hash: device.last_hash,
            },
        };
        return response
            .seal_for(header.version(), server.signing_key())
            .map_err(|e| ApiError::Internal(format!("sealing the answer failed: {e}")));
    }
    // A tablet of format 3 adopts the server's position when its own
    // chain disagrees (it lost its last commit): not blocked by that.
    let can_adopt = request.lineage != [0; 16];

    let ctx = Ctx {
        server,
        device: &device,
        key: &key,
        now_ms,
        today,
        evidence: &evidence,
    };
    let mut chain = Chain {
        last_seq: device.last_seq,
        last_hash: device.last_hash,
    };
    let mut acks = Vec::new();
    let mut refusal = None;
    let mut stats = Stats::default();
    for cs in incoming {
        tx.savepoint()?;
        match apply_change_set(&mut *tx, &ctx, chain, cs, &mut stats) {
            Ok((ack, next)) => {
                tx.release_savepoint()?;
                chain = next;
                acks.push(ack);
            }
            Err(Step::Refused(r)) => {
                tx.rollback_to_savepoint()?;
                if r.code == RefusalCode::SequenceGap
                    || (r.code == RefusalCode::HashChainMismatch && can_adopt)
                {
                    // The tablet resends what is missing, or adopts the
                    // server's chain position: not stuck.
                    tracing::info!(device = %device_id, seq = r.seq, code = r.code.as_str(), "change set refused");
                } else {
                    // A resend of the same bytes gets the same refusal: the
                    // device's outbox is stuck until an operator acts, and
                    // `crvs-server devices` shows it.
                    tracing::warn!(
                        device = %device_id,
                        seq = r.seq,
                        code = r.code.as_str(),
                        "change set refused; the device cannot sync past it"
                    );
                    tx.record_refusal(
                        device_id,
                        &DeviceRefusal {
                            seq: r.seq,
                            code: r.code.as_str().to_string(),
                            at_ms: now_ms,
                        },
                    )?;
                }
                refusal = Some(r);
                break;
            }
            Err(Step::Failed(e)) => return Err(e),
            Err(Step::Deferred) => {
                tx.rollback_to_savepoint()?;
                tracing::info!(device = %device_id, "the request's decompression budget is spent; the rest waits for the next request");
                break;
            }
        }
    }

    let mut feed = tx.server_changes_since(device_id, request.cursor, FEED_PAGE + 1)?;
    let more = feed.len() > FEED_PAGE;
    feed.truncate(FEED_PAGE);
    let cursor = feed.last().map_or(request.cursor, |c| c.cursor);
    let mut updates: Vec<RecordUpdate> = Vec::new();
    for c in feed {
        match updates.last_mut() {
            Some(u) if u.record_id == *c.record_id.as_bytes() => u.changes.push(c.change),
            _ => updates.push(RecordUpdate {
                record_id: c.record_id.into_bytes(),
                changes: vec![c.change],
            }),
        }
    }
    // The tablet keeps the server's proof of every code it receives.
    let mut issuances = Vec::new();
    let mut proved = HashSet::new();
    for u in &updates {
        if proved.insert(u.record_id)
            && let Some(k) = tx.issued_kidc(Uuid::from_bytes(u.record_id))?
        {
            issuances.push(IssuanceProof::sign(server.signing_key(), u.record_id, &k));
        }
    }
    // Every code issued here is reserved outside the database first: a
    // restored backup never draws it again (see `crate::ledger`).
    server.ledger().reserve(&stats.reserve, now_ms)?;
    // Durable before the answer leaves.
    tx.commit()?;

    let applied = acks.iter().filter(|a| a.outcome == AckOutcome::Applied).count();
    tracing::info!(
        device = %device_id,
        applied,
        resent = acks.len() - applied,
        refused = refusal.as_ref().map(|r| r.code.as_str()),
        records = stats.records,
        kidcs = stats.kidcs,
        recorded_again = stats.recorded_again,
        holds = stats.holds,
        updates = updates.len(),
        cursor,
        "sync"
    );
    let response = SyncResponse {
        request_hash: wire::request_hash(body),
        server_time_ms: now_ms,
        acks,
        refusal,
        next_seq: chain.last_seq.saturating_add(1),
        updates,
        cursor,
        more,
        issuances,
        chain: ChainPosition {
            seq: chain.last_seq,
            hash: chain.last_hash,
        },
    };
    // In the request's version: a version-2 tablet reads a version-2 answer.
    response
        .seal_for(header.version(), server.signing_key())
        .map_err(|e| ApiError::Internal(format!("sealing the answer failed: {e}")))
}

/// The sequence number in a change set's header, if the bytes are long
/// enough to hold one (for refusing bytes that do not frame).
/// The store-lineage rule (sync format 3): a request of the device's
/// lineage passes; a request of another lineage passes only if it adopted
/// the device's current chain position (it lost its own, and now takes
/// over the chain), and then its lineage becomes the device's; any other
/// comes from another copy of the store and is refused, by name, and
/// counted. The first lineage a device shows is taken as its own. Format-2
/// requests carry none and are not checked.
fn check_lineage(
    tx: &mut dyn WriteTx,
    device: &Device,
    lineage: [u8; 16],
    adopted: Option<ChainPosition>,
    now_ms: i64,
) -> Result<Option<Refusal>, ApiError> {
    if lineage == [0; 16] || device.lineage == Some(lineage) {
        return Ok(None);
    }
    let position = ChainPosition {
        seq: device.last_seq,
        hash: device.last_hash,
    };
    if device.lineage.is_none() || adopted == Some(position) {
        if device.lineage.is_some() {
            tracing::warn!(
                device = %device.device_id,
                seq = device.last_seq,
                "the device adopted the server's chain position (it lost its own): its other copies are refused from now on"
            );
        }
        tx.set_lineage(device.device_id, &lineage, device.lineage.is_some())?;
        return Ok(None);
    }
    tx.record_clone_refusal(device.device_id, now_ms)?;
    tracing::warn!(
        device = %device.device_id,
        refusals = device.clone_refusals + 1,
        "sync refused: the request comes from another copy of the device's store"
    );
    Ok(Some(Refusal {
        seq: device.last_seq.saturating_add(1),
        code: RefusalCode::ClonedStore,
        expected_seq: None,
        message: "another copy of this tablet's store syncs as this device; this copy may not sync. \
                  Contact the operators: the device must be checked and enrolled again"
            .into(),
    }))
}

/// The codes of `proofs` that the server's key signed, by record. A proof
/// that does not verify is ignored (it proves nothing) and counted.
fn verified_evidence(server: &Server, proofs: &[IssuanceProof], device_id: Uuid) -> HashMap<[u8; 16], Kidc> {
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

fn peek_seq(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(17..25)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

fn wire_refusal(seq: u64, e: &WireError) -> Step {
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
enum Incoming {
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
struct OpenedBody {
    prev_hash: Hash,
    records: Vec<Pending>,
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
struct Pending {
    rc: RecordChanges,
    /// For a record sent as one document chunk (one the tablet never sent
    /// before): prepared as a new record. Used only if the record is still
    /// absent under the writer.
    early: Option<Result<Option<Prepared>, Step>>,
}

/// Frames, verifies and decodes the change sets of a request, and prepares
/// the records they create, on all cores. Pure: nothing here depends on
/// state that the writer could change, except which change sets are new,
/// which the writer checks again.
fn open_change_sets(ctx: &Ctx<'_>, change_sets: Vec<Vec<u8>>) -> Result<Vec<Incoming>, ApiError> {
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

/// `f` over `items` on up to [`MAX_WORKERS`] threads, results in order;
/// `None` if a worker panicked.
fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Option<Vec<R>> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS);
    if workers < 2 || items.len() < PARALLEL_FROM {
        return Some(items.into_iter().map(f).collect());
    }
    let chunk = items.len().div_ceil(workers);
    let mut items = items;
    let mut chunks: Vec<Vec<T>> = Vec::with_capacity(workers);
    while !items.is_empty() {
        let rest = items.split_off(chunk.min(items.len()));
        chunks.push(std::mem::replace(&mut items, rest));
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(h.join().ok()?);
        }
        Some(out)
    })
}

/// Applies one signed change set, or says why not. On success returns its
/// acknowledgement and the device's new chain position.
fn apply_change_set(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    chain: Chain,
    incoming: Incoming,
    stats: &mut Stats,
) -> Result<(Ack, Chain), Step> {
    let expected = chain.last_seq.saturating_add(1);
    let (cs, opened) = match incoming {
        Incoming::Unframed { error, claimed } => {
            return Err(wire_refusal(claimed.unwrap_or(expected), &error));
        }
        Incoming::Framed { cs, opened } => (cs, opened),
        Incoming::Deferred => return Err(Step::Deferred),
    };
    let seq = cs.seq();
    if cs.device_id() != *ctx.device.device_id.as_bytes() {
        return Err(refuse(
            seq,
            RefusalCode::WrongDevice,
            "the change set was signed by another device",
        ));
    }
    if seq == 0 {
        return Err(refuse(seq, RefusalCode::Malformed, "sequence numbers start at 1"));
    }
    let hash = cs.hash();
    if seq <= chain.last_seq {
        let logged = tx.logged_hash(ctx.device.device_id, seq)?;
        if logged.is_none() && tx.set_aside_hash(ctx.device.device_id, seq)? == Some(hash) {
            return Ok((
                Ack {
                    seq,
                    hash,
                    outcome: AckOutcome::SetAside,
                },
                chain,
            ));
        }
        return match logged {
            Some(logged) if logged == hash => Ok((
                Ack {
                    seq,
                    hash,
                    outcome: AckOutcome::AlreadyApplied,
                },
                chain,
            )),
            _ => Err(refuse(
                seq,
                RefusalCode::HashChainMismatch,
                "a different change set with this sequence number was applied earlier",
            )),
        };
    }
    if seq > expected {
        return Err(Step::Refused(Refusal {
            seq,
            code: RefusalCode::SequenceGap,
            expected_seq: Some(expected),
            message: format!("change set {seq} arrived but {expected} is expected next"),
        }));
    }
    if ctx.device.unblock_seq == Some(seq) {
        // An operator unblocked the device: this change set is set aside,
        // whatever it holds (kept verbatim, nothing applied), and the chain
        // moves past it. Its records, as far as it decodes, are set aside.
        let records: Vec<Uuid> = match opened {
            Some(Ok(body)) => body
                .records
                .iter()
                .map(|p| Uuid::from_bytes(p.rc.record_id))
                .collect(),
            _ => cs
                .open(ctx.key)
                .map(|b| b.records.iter().map(|r| Uuid::from_bytes(r.record_id)).collect())
                .unwrap_or_default(),
        };
        tx.set_aside(
            &LogEntry {
                device_id: ctx.device.device_id,
                seq,
                hash: &hash,
                signed: cs.as_bytes(),
                received_at_ms: ctx.now_ms,
            },
            &records,
        )?;
        tracing::warn!(device = %ctx.device.device_id, seq, records = records.len(), "change set set aside, as an operator asked");
        return Ok((
            Ack {
                seq,
                hash,
                outcome: AckOutcome::SetAside,
            },
            Chain {
                last_seq: seq,
                last_hash: hash,
            },
        ));
    }
    let body = match opened {
        Some(opened) => opened,
        None => cs.open(ctx.key).map(OpenedBody::from),
    }
    .map_err(|e| wire_refusal(seq, &e))?;
    if body.prev_hash != chain.last_hash {
        return Err(refuse(
            seq,
            RefusalCode::HashChainMismatch,
            "the change set does not link to the device's last applied change set",
        ));
    }
    apply_records(tx, ctx, seq, body.records, stats)?;
    tx.append_change_set(&LogEntry {
        device_id: ctx.device.device_id,
        seq,
        hash: &hash,
        signed: cs.as_bytes(),
        received_at_ms: ctx.now_ms,
    })?;
    tx.advance_device(ctx.device.device_id, seq, &hash)?;
    Ok((
        Ack {
            seq,
            hash,
            outcome: AckOutcome::Applied,
        },
        Chain {
            last_seq: seq,
            last_hash: hash,
        },
    ))
}

fn tablet_change_refusal(seq: u64, e: TabletChangeError) -> Step {
    match e {
        TabletChangeError::ServerOwnedField(_) => refuse(seq, RefusalCode::ServerOwnedField, e.to_string()),
        other => refuse(seq, RefusalCode::InvalidRecord, other.to_string()),
    }
}

/// Applies every record of a change set.
///
/// The automerge work (decode, apply, check, the server's edits) needs no
/// storage, so it runs on all cores: for new records before the writer
/// was taken ([`open_change_sets`]), for the others here, when the records
/// are distinct ([`prepare_record`]); loading before and saving after stay
/// serial, in the change set's order ([`finish_record`]). A change set
/// naming one record twice is processed record by record, so that the
/// second sees the first.
fn apply_records(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    seq: u64,
    records: Vec<Pending>,
    stats: &mut Stats,
) -> Result<(), Step> {
    // Records an operator set aside take no more changes: ignored, not
    // refused (the tablet stops sending them once it learns).
    let mut kept = Vec::with_capacity(records.len());
    for p in records {
        if tx.is_set_aside(Uuid::from_bytes(p.rc.record_id))? {
            tracing::info!(record = %Uuid::from_bytes(p.rc.record_id), seq, "changes to a set-aside record ignored");
            continue;
        }
        kept.push(p);
    }
    let records = kept;
    let mut ids = HashSet::with_capacity(records.len());
    let distinct = records.iter().all(|p| ids.insert(p.rc.record_id));
    if !distinct {
        for p in records {
            let stored = load_owned(tx, ctx, seq, p.rc.record_id)?;
            let prepared = match (stored, p.early) {
                (None, Some(early)) => early?,
                (stored, _) => prepare_record(ctx, seq, p.rc, stored)?,
            };
            if let Some(p) = prepared {
                finish_record(tx, ctx, seq, p, stats)?;
            }
        }
        return Ok(());
    }
    // Prepared early and still new, or to prepare now.
    let mut slots: Vec<Option<Result<Option<Prepared>, Step>>> = Vec::with_capacity(records.len());
    let mut jobs = Vec::new();
    for (i, p) in records.into_iter().enumerate() {
        let stored = load_owned(tx, ctx, seq, p.rc.record_id)?;
        match (stored, p.early) {
            (None, Some(early)) => slots.push(Some(early)),
            (stored, _) => {
                slots.push(None);
                jobs.push((i, p.rc, stored));
            }
        }
    }
    let results = par_map(jobs, |(i, rc, stored)| (i, prepare_record(ctx, seq, rc, stored)))
        .ok_or_else(|| internal("a record worker panicked"))?;
    for (i, result) in results {
        slots[i] = Some(result);
    }
    // The first problem in the change set's order wins; nothing is saved.
    let mut prepared = Vec::with_capacity(slots.len());
    for slot in slots {
        prepared.extend(slot.ok_or_else(|| internal("a record was not prepared"))??);
    }
    for p in prepared {
        finish_record(tx, ctx, seq, p, stats)?;
    }
    Ok(())
}

/// Process records on several threads from this many records on.
const PARALLEL_FROM: usize = 8;
/// At most this many threads per change set.
const MAX_WORKERS: usize = 4;

/// Loads a record, refusing one that another device created.
fn load_owned(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    seq: u64,
    record_id: [u8; 16],
) -> Result<Option<StoredRecord>, Step> {
    let stored = tx.load_record(Uuid::from_bytes(record_id))?;
    if stored
        .as_ref()
        .is_some_and(|s| s.origin_device != ctx.device.device_id)
    {
        return Err(refuse(
            seq,
            RefusalCode::OutOfScope,
            "the record belongs to another device",
        ));
    }
    Ok(stored)
}

/// A record with the tablet's changes applied and checked, and the
/// server's edits committed, ready to be stored. Only the KIdC is not yet
/// in the issuance log.
struct Prepared {
    record_id: Uuid,
    stored: Option<StoredRecord>,
    /// The tablet's bytes the stored document did not have, ready to be
    /// appended to it verbatim: a document chunk, or change chunks.
    fresh: Vec<u8>,
    office: String,
    kind: RecordKind,
    status: Status,
    /// The server's edits: the hold, if it set one now.
    /// The hold the server set now, if it did.
    new_hold: Option<&'static str>,
    /// The KIdC to issue (drawn, not yet in the issuance log).
    kidc: Option<(Kidc, Category)>,
    /// The bytes to store, and the server's change to feed to the device.
    saved: Saved,
}

/// A record document with the server's change committed, as stored.
struct Saved {
    blob: Vec<u8>,
    server_change: Option<Vec<u8>>,
}

/// The pure part of applying one record's changes: decode, apply, check,
/// and the server's own edits, committed; `None` when the changes hold
/// nothing the stored record does not already have.
///
/// Automerge's decoder panics on some malformed documents whose checksum
/// is valid (a buggy or hostile tablet can send one): such a panic is a
/// `malformed` refusal of the change set, like any other undecodable
/// input, not a failed request that the tablet would retry forever.
fn prepare_record(
    ctx: &Ctx<'_>,
    seq: u64,
    rc: RecordChanges,
    stored: Option<StoredRecord>,
) -> Result<Option<Prepared>, Step> {
    let record_id = Uuid::from_bytes(rc.record_id);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prepare_record_inner(ctx, seq, rc, stored)
    }))
    .unwrap_or_else(|_| {
        tracing::warn!(record = %record_id, seq, "the automerge decoder panicked on a record");
        Err(refuse(
            seq,
            RefusalCode::Malformed,
            "a record's automerge data is malformed (the decoder failed on it)",
        ))
    })
}

/// Most elements (change or document chunks) in one record's changes.
pub const MAX_CHUNKS_PER_RECORD: usize = 1000;
/// Largest stored document of one record. A birth is about 2 KB; a record
/// edited a hundred times stays far below.
pub const MAX_RECORD_DOC_BYTES: usize = 1 << 20;

fn bounds_refusal(seq: u64, e: &bounds::BoundsError) -> Step {
    match e {
        bounds::BoundsError::TooManyBytes(_) | bounds::BoundsError::TooManyEntries(_) => {
            refuse(seq, RefusalCode::TooLarge, e.to_string())
        }
        other => refuse(seq, RefusalCode::Malformed, other.to_string()),
    }
}

fn prepare_record_inner(
    ctx: &Ctx<'_>,
    seq: u64,
    rc: RecordChanges,
    stored: Option<StoredRecord>,
) -> Result<Option<Prepared>, Step> {
    let record_id = Uuid::from_bytes(rc.record_id);
    // Bounded before automerge sees a byte: no chunk may claim more
    // operations, or inflate to more bytes, than a record can need.
    if rc.changes.len() > MAX_CHUNKS_PER_RECORD {
        return Err(refuse(
            seq,
            RefusalCode::TooLarge,
            "a record carries too many changes",
        ));
    }
    for raw in &rc.changes {
        bounds::check(raw, &bounds::Limits::RECORD).map_err(|e| bounds_refusal(seq, &e))?;
    }
    let rc_was_document = matches!(rc.changes.as_slice(), [chunk] if record::is_document_chunk(chunk));
    let (mut doc, fresh, before) = match (&stored, rc.changes.as_slice()) {
        // The common case: a record the server has not seen, sent as one
        // document chunk. Loading it checks its hashes; it is kept verbatim.
        (None, [chunk]) if record::is_document_chunk(chunk) => {
            let mut doc = AutoCommit::load(chunk)
                .map_err(|_| refuse(seq, RefusalCode::Malformed, "an automerge document does not load"))?;
            if doc
                .document()
                .get_changes_meta(&[])
                .iter()
                .any(|m| ctx.server.is_server_actor(&m.actor))
            {
                return Err(server_actor_refusal(seq));
            }
            let mut rc = rc;
            let chunk = rc.changes.pop().unwrap_or_default();
            (doc, chunk, None)
        }
        _ => {
            let (doc, fresh, before) = apply_tablet_changes(ctx, seq, rc, stored.as_ref())?;
            if fresh.is_empty() {
                return Ok(None);
            }
            (doc, fresh, before)
        }
    };
    // Content problems (the workflow's rules) hold the record; the layout,
    // the server's fields and the history refuse the change set.
    let (view, workflow_problem) = match record::check_tablet_changes(before.as_ref(), &doc) {
        Ok(view) => (view, false),
        Err(TabletChangeError::Workflow(w)) => match record::read(&doc) {
            Ok(view) => (view, true),
            Err(_) => return Err(tablet_change_refusal(seq, TabletChangeError::Workflow(w))),
        },
        Err(e) => return Err(tablet_change_refusal(seq, e)),
    };
    if stored.is_none() && before.is_none() && rc_was_document {
        // Every operation of a new record is visible when there are
        // exactly as many as its visible values (kind, office, data, the
        // list, one per step): then nothing can hide. Otherwise each
        // operation is checked (the general path checks its fresh
        // changes in `apply_tablet_changes`).
        let visible = 4 + view.transitions.len() as u64;
        if automerge::ReadDoc::stats(doc.document()).num_ops != visible {
            record::check_tablet_operations(&doc.get_changes(&[]), true)
                .map_err(|e| tablet_change_refusal(seq, e))?;
        }
    }
    if view.office != ctx.device.office {
        return Err(refuse(
            seq,
            RefusalCode::OutOfScope,
            "the record lies outside the device's office",
        ));
    }

    let mut new_hold: Option<&'static str> = None;
    let mut kidc = None;
    if workflow_problem {
        if view.server.hold.is_none() {
            new_hold = Some(HOLD_INVALID_WORKFLOW);
            tracing::info!(record = %record_id, "record held: its workflow breaks the rules");
        }
    } else if view.kind == RecordKind::Birth && view.server.kidc.is_none() && view.server.hold.is_none() {
        match validate_birth(&view, ctx.today) {
            Ok(reg) => {
                let tablet_status = workflow::derive(&view.transitions)
                    .map_err(|e| refuse(seq, RefusalCode::InvalidRecord, e.to_string()))?;
                if tablet_status == Some(Status::Approved) {
                    let category = kidc_category(&reg);
                    // A code the server proved it issued before (the
                    // database was restored since) is the one to record
                    // again; otherwise a fresh draw, checked against the
                    // issuance log and the ledger in `issue_kidc`.
                    // `rand::rng()` is a CSPRNG seeded from the operating system.
                    let drawn = match ctx.evidence.get(record_id.as_bytes()) {
                        Some(k) => *k,
                        None => Kidc::generate(category, &mut rand::rng()),
                    };
                    kidc = Some((drawn, category));
                }
            }
            Err(problems) => {
                new_hold = Some(HOLD_INVALID_ON_RECEIPT);
                // A count only: an unknown key's name is the tablet's text.
                tracing::info!(
                    record = %record_id,
                    problems = problems.problems.len(),
                    "record held: its data does not validate on receipt (server's date, device's office)"
                );
            }
        }
    }
    // The status once the server's edits are in: they never depend on
    // which code was drawn, so a redraw in `finish_record` keeps it.
    let mut view = view;
    if let Some(code) = new_hold {
        view.server.hold = Some(code.to_string());
    }
    if let Some((k, _)) = &kidc {
        view.server.kidc = Some(*k);
    }
    let status = if workflow_problem {
        // A registered record keeps its registration; the hold flags it.
        if view.server.kidc.is_some() {
            Status::Registered
        } else {
            Status::Held
        }
    } else {
        view.status()
            .map_err(|e| refuse(seq, RefusalCode::InvalidRecord, e.to_string()))?
    };
    let saved = server_edits_saved(
        ctx,
        doc,
        stored.as_ref(),
        &fresh,
        new_hold,
        kidc.as_ref().map(|k| &k.0),
    )?;
    if saved.blob.len() > MAX_RECORD_DOC_BYTES {
        return Err(refuse(
            seq,
            RefusalCode::TooLarge,
            format!("the record's document would exceed {MAX_RECORD_DOC_BYTES} bytes"),
        ));
    }
    Ok(Some(Prepared {
        record_id,
        stored,
        fresh,
        office: view.office,
        kind: view.kind,
        status,
        new_hold,
        kidc,
        saved,
    }))
}

fn server_actor_refusal(seq: u64) -> Step {
    refuse(
        seq,
        RefusalCode::ServerOwnedField,
        "a change carries the server's actor id",
    )
}

/// The general path: decode each change or document chunk, keep the
/// changes the stored document lacks, and apply them. Returns the
/// document, the raw bytes of the changes it gained, and the document as
/// it was before (for an existing record).
fn apply_tablet_changes(
    ctx: &Ctx<'_>,
    seq: u64,
    rc: RecordChanges,
    stored: Option<&StoredRecord>,
) -> Result<(AutoCommit, Vec<u8>, Option<automerge::Automerge>), Step> {
    let mut doc = match stored {
        Some(s) => {
            AutoCommit::load(&s.doc).map_err(|_| internal("a stored record document does not load"))?
        }
        None => AutoCommit::new(),
    };
    let mut seen: HashSet<ChangeHash> = HashSet::new();
    let mut fresh: Vec<Change> = Vec::with_capacity(rc.changes.len());
    // Each element is a change chunk, or a document chunk
    // (`record::decode_changes`).
    for raw in &rc.changes {
        let decoded = record::decode_changes(raw)
            .map_err(|_| refuse(seq, RefusalCode::Malformed, "an automerge change does not decode"))?;
        for change in decoded {
            let h = change.hash();
            if seen.insert(h) && doc.get_change_meta_by_hash(&h).is_none() {
                // A server change the server already has (a tablet that
                // sends its whole document) is harmless; a new one is not.
                if ctx.server.is_server_actor(change.actor_id()) {
                    return Err(server_actor_refusal(seq));
                }
                fresh.push(change);
            }
        }
    }
    if fresh.is_empty() {
        return Ok((doc, Vec::new(), None));
    }
    record::check_tablet_operations(&fresh, stored.is_none()).map_err(|e| tablet_change_refusal(seq, e))?;
    let before = stored.map(|_| doc.document().clone());
    let bytes: Vec<u8> = fresh.iter().flat_map(|c| c.raw_bytes().iter().copied()).collect();
    doc.apply_changes(fresh)
        .map_err(|_| refuse(seq, RefusalCode::Malformed, "the automerge changes do not apply"))?;
    if !doc.get_missing_deps(&[]).is_empty() {
        return Err(refuse(
            seq,
            RefusalCode::InvalidRecord,
            "a change depends on changes the server has not received",
        ));
    }
    Ok((doc, bytes, before))
}

/// The server's re-validation of a birth: its data, dated no later than
/// `latest`, at the record's office. The record lies in the device's office
/// (checked before), a commune from enrolment; a code that does not parse
/// fails validation (the record is held).
fn validate_birth(
    view: &record::RecordView,
    latest: Date,
) -> Result<BirthRegistration, birth::ValidationError> {
    match GazetteerCode::parse_level(&view.office, Level::Commune) {
        Ok(office) => birth::validate_at_office(&view.data, latest, &office),
        Err(_) => Err(birth::ValidationError {
            problems: vec![birth::FieldProblem::new("office", "must be a commune code")],
        }),
    }
}

/// **KIdC category:** citizen when either parent's nationality is `KHM`.
fn kidc_category(reg: &BirthRegistration) -> Category {
    if reg.mother.nationality == "KHM" || reg.father.as_ref().is_some_and(|f| f.nationality == "KHM") {
        Category::CITIZEN
    } else {
        Category::FOREIGN_RESIDENT
    }
}

/// Makes the server's edits of a record (if it has any to make) with the
/// server's actor, commits them, and produces the bytes to store: the
/// stored bytes with the fresh ones and the server's change appended, or
/// a compacted `save()` once that grows large.
fn server_edits_saved(
    ctx: &Ctx<'_>,
    mut doc: AutoCommit,
    stored: Option<&StoredRecord>,
    fresh: &[u8],
    hold: Option<&str>,
    kidc: Option<&Kidc>,
) -> Result<Saved, Step> {
    let failed = |_| internal("writing the server part of a record failed");
    doc.set_actor(ctx.server.actor().clone());
    if let Some(code) = hold {
        record::set_hold(&mut doc, code).map_err(failed)?;
    }
    if let Some(k) = kidc {
        record::set_registration(&mut doc, k, ctx.now_ms).map_err(failed)?;
    }
    let server_change = doc
        .commit()
        .and_then(|_| doc.get_last_local_change())
        .map(|c| c.raw_bytes().to_vec());
    let stored_len = stored.map_or(0, |s| s.doc.len());
    let added = fresh.len() + server_change.as_ref().map_or(0, Vec::len);
    let blob = if stored.is_some() && stored_len + added > COMPACT_ABOVE {
        doc.save()
    } else {
        let mut b = Vec::with_capacity(stored_len + added);
        b.extend_from_slice(stored.map_or(&[][..], |s| &s.doc));
        b.extend_from_slice(fresh);
        if let Some(c) = &server_change {
            b.extend_from_slice(c);
        }
        b
    };

    Ok(Saved { blob, server_change })
}

/// The storage part of applying one record: issue its KIdC in the
/// issuance log (redoing the server's edits if the drawn code was taken),
/// store the document, feed the server's change to the device.
fn finish_record(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    seq: u64,
    p: Prepared,
    stats: &mut Stats,
) -> Result<(), Step> {
    let Prepared {
        record_id,
        stored,
        fresh,
        office,
        kind,
        mut status,
        new_hold,
        kidc,
        mut saved,
    } = p;
    stats.records += 1;
    let mut hold = new_hold;
    if let Some((drawn, category)) = kidc {
        let issued = issue_kidc(tx, ctx, record_id, seq, category, drawn, stats)?;
        if issued != Issued::Code(drawn) {
            // The drawn code was taken, or another is this record's, or
            // none may be issued: redo the edits on the document as it
            // was before them, so that no other person's code ever
            // appears in this record.
            let mut doc = AutoCommit::new();
            for bytes in [stored.as_ref().map_or(&[][..], |s| &s.doc), &fresh] {
                doc.load_incremental(bytes)
                    .map_err(|_| internal("a record document does not reload"))?;
            }
            match issued {
                Issued::Code(k) => {
                    saved = server_edits_saved(ctx, doc, stored.as_ref(), &fresh, new_hold, Some(&k))?;
                }
                Issued::Conflict => {
                    saved = server_edits_saved(
                        ctx,
                        doc,
                        stored.as_ref(),
                        &fresh,
                        Some(HOLD_KIDC_CONFLICT),
                        None,
                    )?;
                    status = Status::Held;
                    hold = Some(HOLD_KIDC_CONFLICT);
                }
            }
        }
        if matches!(issued, Issued::Code(_)) {
            stats.kidcs += 1;
        }
    }
    let record = StoredRecord {
        record_id,
        office,
        origin_device: ctx.device.device_id,
        kind: kind.as_str().to_string(),
        status: status.as_str().to_string(),
        doc: saved.blob,
        updated_at_ms: ctx.now_ms,
    };
    if stored.is_some() {
        tx.update_record(&record)?;
    } else {
        tx.insert_record(&record)?;
    }
    if let Some(c) = &saved.server_change {
        tx.append_server_change(ctx.device.device_id, record_id, c, ctx.now_ms)?;
    }
    if let Some(reason) = hold {
        stats.holds += 1;
        tx.insert_hold(record_id, &record.office, reason, ctx.now_ms)?;
    }
    tracing::debug!(record = %record_id, seq, status = status.as_str(), "record applied");
    Ok(())
}

/// What [`issue_kidc`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Issued {
    /// The record's code.
    Code(Kidc),
    /// The record had a code before a restore, and recording it again
    /// would give one code to two records: hold it, issue nothing.
    Conflict,
}

/// The record's KIdC, in this order:
///
/// 1. the one already in the issuance log;
/// 2. the one issued before the database was restored from a backup: the
///    tablet's signed evidence, or the ledger's reservation (they must
///    agree, and the code must not be another record's);
/// 3. `drawn` if neither the issuance log nor the ledger holds it, else a
///    fresh draw that neither holds.
///
/// Every code issued is pushed to `stats.reserve`, for the ledger.
fn issue_kidc(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    record_id: Uuid,
    seq: u64,
    category: Category,
    drawn: Kidc,
    stats: &mut Stats,
) -> Result<Issued, Step> {
    let evidence = ctx.evidence.get(record_id.as_bytes()).copied();
    if let Some(k) = tx.issued_kidc(record_id)? {
        if evidence.is_some_and(|e| e != k) {
            tracing::warn!(record = %record_id, "the tablet's evidence names another code than the issuance log; the log stands");
        } else {
            tracing::warn!(record = %record_id, "record already in the issuance log: its code is reused");
        }
        return Ok(Issued::Code(k));
    }
    let ledger = ctx.server.ledger();
    let reserved = ledger.code_for(record_id)?;
    let known = match (evidence, reserved) {
        (Some(e), Some(l)) if e != l => {
            tracing::error!(record = %record_id, "the tablet's evidence and the KIdC ledger name different codes; record held");
            return Ok(Issued::Conflict);
        }
        (e, l) => e.or(l),
    };
    fn issuance<'k>(
        kidc: &'k Kidc,
        reason: &'k str,
        record_id: Uuid,
        category: Category,
        ctx: &Ctx<'_>,
        seq: u64,
    ) -> Issuance<'k> {
        Issuance {
            kidc,
            record_id,
            category: category.digit(),
            issued_at_ms: ctx.now_ms,
            device_id: ctx.device.device_id,
            seq,
            reason,
        }
    }
    if let Some(k) = known {
        if ledger.holder_of(&k)?.is_some_and(|holder| holder != record_id)
            || !tx.insert_issuance(&issuance(
                &k,
                REASON_RECORDED_AGAIN,
                record_id,
                category,
                ctx,
                seq,
            ))?
        {
            tracing::error!(record = %record_id, "the code this record held before the restore went to another record; record held");
            return Ok(Issued::Conflict);
        }
        tracing::info!(
            record = %record_id,
            from = if evidence.is_some() { "evidence" } else { "ledger" },
            "a code issued before the restore recorded again"
        );
        stats.recorded_again += 1;
        stats.reserve.push((k, record_id));
        return Ok(Issued::Code(k));
    }
    let mut kidc = drawn;
    for _ in 0..MAX_KIDC_DRAWS {
        if ledger.holder_of(&kidc)?.is_none() {
            if tx.insert_issuance(&issuance(
                &kidc,
                REASON_BIRTH_APPROVED,
                record_id,
                category,
                ctx,
                seq,
            ))? {
                stats.reserve.push((kidc, record_id));
                return Ok(Issued::Code(kidc));
            }
            if let Some(k) = tx.issued_kidc(record_id)? {
                return Ok(Issued::Code(k));
            }
        }
        tracing::info!(record = %record_id, "drawn KIdC already issued or reserved; drawing again");
        kidc = Kidc::generate(category, &mut rand::rng());
    }
    Err(internal("no unused KIdC found after many draws"))
}

/// What a release attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The hold's reason code.
    pub hold_reason: String,
    /// The hold was lifted.
    pub released: bool,
    /// The record's status afterwards.
    pub status: Status,
    /// The KIdC issued by the release, if it issued one.
    pub kidc: Option<Kidc>,
    /// Why it is still held: rule codes and field names, no values.
    pub problems: Vec<String>,
}

/// Re-checks a held record against the server's rules now, and lifts its
/// hold if it passes: for an approved birth it issues the KIdC (through
/// the issuance log and the ledger, as a sync would). The server's change
/// goes to the record's device's feed. Every attempt is audited with the
/// operator, the reason and the outcome. `None` when the record is not
/// held.
pub fn release_hold(
    server: &Server,
    record_id: Uuid,
    by: &str,
    why: &str,
) -> Result<Option<Released>, ApiError> {
    let now_ms = server.now_ms();
    let today = Date::today_in_cambodia(now_ms.saturating_add(CLOCK_TOLERANCE_MS as i64));
    let mut tx = server.storage().begin()?;
    let Some(hold) = tx.hold(record_id)? else {
        return Ok(None);
    };
    let stored = tx
        .load_record(record_id)?
        .ok_or_else(|| ApiError::Internal("a held record is missing".into()))?;
    let device = tx
        .device(stored.origin_device)?
        .ok_or_else(|| ApiError::Internal("a record's device is missing".into()))?;
    let key = VerifyingKey::from_bytes(&device.public_key)
        .map_err(|_| ApiError::Internal("a stored device key is invalid".into()))?;
    let mut doc = AutoCommit::load(&stored.doc)
        .map_err(|_| ApiError::Internal("a stored record does not load".into()))?;
    let view =
        record::read(&doc).map_err(|e| ApiError::Internal(format!("a stored record does not read: {e}")))?;
    let evidence = HashMap::new();
    let ctx = Ctx {
        server,
        device: &device,
        key: &key,
        now_ms,
        today,
        evidence: &evidence,
    };
    let mut problems = Vec::new();
    let tablet_status = match workflow::derive(&view.transitions) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("workflow: {e}"));
            None
        }
    };
    let mut reg = None;
    if view.kind == RecordKind::Birth {
        match validate_birth(&view, today) {
            Ok(r) => reg = Some(r),
            Err(e) => problems.extend(e.problems.iter().map(|p| format!("{}: {}", p.field, p.problem))),
        }
    }
    let mut stats = Stats::default();
    let mut kidc = None;
    if problems.is_empty()
        && tablet_status == Some(Status::Approved)
        && view.server.kidc.is_none()
        && let Some(reg) = &reg
    {
        let category = kidc_category(reg);
        let drawn = Kidc::generate(category, &mut rand::rng());
        // The device's last sequence number stands for "released by an
        // operator" in the issuance log's `seq` column.
        match issue_kidc(
            &mut *tx,
            &ctx,
            record_id,
            device.last_seq,
            category,
            drawn,
            &mut stats,
        ) {
            Ok(Issued::Code(k)) => kidc = Some(k),
            Ok(Issued::Conflict) => problems.push("kidc_conflict".into()),
            Err(Step::Failed(e)) => return Err(e),
            Err(_) => return Err(ApiError::Internal("issuing the KIdC failed".into())),
        }
    }
    let released = problems.is_empty();
    let mut status = view.status().unwrap_or(Status::Held);
    if released {
        doc.set_actor(server.actor().clone());
        let failed = |_| ApiError::Internal("writing the server part of a record failed".into());
        record::clear_hold(&mut doc).map_err(failed)?;
        if let Some(k) = &kidc {
            record::set_registration(&mut doc, k, now_ms).map_err(failed)?;
        }
        let change = doc
            .commit()
            .and_then(|_| doc.get_last_local_change())
            .map(|c| c.raw_bytes().to_vec());
        let after = record::read(&doc)
            .map_err(|e| ApiError::Internal(format!("a released record does not read: {e}")))?;
        status = after.status().unwrap_or(Status::Held);
        tx.update_record(&StoredRecord {
            status: status.as_str().to_string(),
            doc: doc.save(),
            updated_at_ms: now_ms,
            ..stored
        })?;
        if let Some(c) = change {
            tx.append_server_change(device.device_id, record_id, &c, now_ms)?;
        }
    }
    tx.audit_release(&ReleaseAudit {
        record_id,
        hold_reason: &hold.reason,
        by,
        why,
        at_ms: now_ms,
        outcome: if released { "released" } else { "still_held" },
    })?;
    server.ledger().reserve(&stats.reserve, now_ms)?;
    tx.commit()?;
    tracing::info!(
        record = %record_id,
        released,
        problems = problems.len(),
        kidc_issued = kidc.is_some(),
        "hold release attempted"
    );
    Ok(Some(Released {
        hold_reason: hold.reason,
        released,
        status,
        kidc,
        problems,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            serde_json::from_str(include_str!("../../fixtures/birth-sok-dara.json")).expect("fixture");
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
