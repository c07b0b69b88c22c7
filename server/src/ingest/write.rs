//! Under the writer: a commit group's requests, each under its own
//! savepoint, in one transaction; the KIdCs and registration numbers they
//! issue reserved in the ledger, in one ledger transaction, before that
//! transaction commits.
//! Then, off the writer, both logs synced before any answer leaves.

use std::collections::{HashMap, HashSet};

use crvs_schema::wire::{
    Ack, AckOutcome, ChainPosition, RecordUpdate, Refusal, RefusalCode, SeqRange, SyncResponse, TabletReport,
};
use crvs_schema::{Date, Kidc};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::ledger::Reservations;
use crate::storage::{Device, DeviceRefusal, Savepoint, StorageError, SyncSeen, WriteTx};

use super::apply::apply_change_set;
use super::open::Incoming;
use super::{CLOCK_TOLERANCE_MS, Chain, Ctx, FEED_PAGE, Stats, Step, replayed};

/// One request's part of a commit group: what was decoded and prepared
/// before the writer, owned, so that the group's leader can run it.
pub(crate) struct Job {
    /// The device as read when the request was authenticated.
    pub(super) seen: Device,
    pub(super) key: VerifyingKey,
    pub(super) now_ms: i64,
    pub(super) today: Date,
    pub(super) evidence: HashMap<[u8; 16], Kidc>,
    pub(super) roster: crate::staff::RosterHistory,
    pub(super) incoming: Vec<Incoming>,
    pub(super) device_clock_ms: i64,
    pub(super) counter: u64,
    pub(super) lineage: [u8; 16],
    pub(super) adopted: Option<ChainPosition>,
    pub(super) cursor: u64,
    /// Change sets whose answer the tablet lost: acknowledged from the
    /// log, not sent again.
    pub(super) resume: Option<SeqRange>,
    /// What the tablet reported, stored with the device.
    pub(super) report: Option<TabletReport>,
}

/// One request's outcome, committed: the answer without its request hash
/// and proofs (added after the commit, off the writer), the codes to prove,
/// and the counters for the log line (none for a refused copy).
pub(crate) struct Written {
    pub(super) response: SyncResponse,
    pub(super) proofs: Vec<([u8; 16], Kidc)>,
    pub(super) stats: Option<Stats>,
}

/// Runs a commit group: each request under its own savepoint (a request
/// that fails is undone alone), then the ledger reservation of every code
/// the group issued, then one commit. A failure of the ledger or of the
/// commit fails every request of the group, and nothing of it is kept.
///
/// On a backend with concurrent writers (PostgreSQL: several servers)
/// the group is the same, but its commit is durable when it returns, so
/// the ledger is synced before it; and a conflict with another
/// transaction fails every request of the group with
/// [`StorageError::Conflict`], which runs each of them again.
pub(crate) fn write_group(server: &Server, jobs: Vec<Job>) -> Vec<Result<Written, ApiError>> {
    let n = jobs.len();
    let group_failed = |what: &str, e: ApiError| {
        if let ApiError::Storage(StorageError::Conflict(why)) = &e {
            tracing::info!(requests = n, why = %why, "a commit group conflicted with another transaction; its requests run again");
            return (0..n)
                .map(|_| Err(ApiError::Storage(StorageError::Conflict(why.clone()))))
                .collect();
        }
        tracing::error!(requests = n, error = %e, "{what}");
        (0..n)
            .map(|_| {
                Err(ApiError::Internal(format!(
                    "{what}; nothing was applied: sync again"
                )))
            })
            .collect()
    };
    let mut tx = match server.storage().begin() {
        Ok(tx) => tx,
        Err(e) => return group_failed("the write transaction could not start", e.into()),
    };
    let mut results = Vec::with_capacity(n);
    let mut reserve = Reservations::default();
    for job in jobs {
        let result = tx
            .savepoint(Savepoint::Request)
            .map_err(ApiError::from)
            .and_then(|()| write_request(server, &mut *tx, job));
        let kept = match &result {
            Ok(_) => tx.release_savepoint(Savepoint::Request),
            Err(_) => tx.rollback_to_savepoint(Savepoint::Request),
        };
        if let Err(e) = kept {
            return group_failed("a savepoint failed", e.into());
        }
        if let Ok(w) = &result
            && let Some(stats) = &w.stats
        {
            reserve.extend_from(&stats.reserve);
        }
        results.push(result);
    }
    // Every code and registration number issued here is reserved outside
    // the database first: a restored backup never draws the code again nor
    // counts to the number again (see `crate::ledger`). Codes of a change
    // set rolled back may be among them: reserving one too many is
    // harmless (the record gets the same one next time). A commit that is
    // durable when it returns needs the ledger durable before it.
    let now_ms = server.now_ms();
    let durable_commit = server.storage().concurrent_writers();
    let reserved = server.ledger().reserve_unsynced(&reserve, now_ms).and_then(|()| {
        if durable_commit {
            server.ledger().sync()
        } else {
            Ok(())
        }
    });
    if let Err(e) = reserved {
        return group_failed(
            "reserving KIdCs and registration numbers in the ledger failed",
            e.into(),
        );
    }
    // Visible now, durable once `settle_group` synced both logs (on
    // SQLite): no answer leaves before.
    if let Err(e) = tx.commit_unsynced() {
        return group_failed("the commit failed", e.into());
    }
    results
}

/// Makes a group's commit durable, off the writer: the ledger's log first,
/// then the database's. If either cannot be synced, every request of the
/// group fails (what it wrote is kept, and its resend is acknowledged as
/// already applied, with the same codes).
pub(crate) fn settle_group(server: &Server, results: &mut [Result<Written, ApiError>]) {
    if let Err(e) = server.ledger().sync().and_then(|()| server.storage().sync_log()) {
        tracing::error!(requests = results.len(), error = %e, "syncing a commit group to disk failed");
        for r in results {
            *r = Err(ApiError::Internal(
                "the server could not write to its disk; sync again later".into(),
            ));
        }
    }
}

/// One request, under the writer. See the module documentation of
/// `ingest`.
fn write_request(server: &Server, tx: &mut dyn WriteTx, job: Job) -> Result<Written, ApiError> {
    let Job {
        seen,
        key,
        now_ms,
        today,
        evidence,
        roster,
        incoming,
        device_clock_ms,
        counter,
        lineage,
        adopted,
        cursor,
        resume,
        report,
    } = job;
    let device_id = seen.device_id;
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

    let skew_ms = device_clock_ms.saturating_sub(now_ms);
    let flagged = skew_ms.unsigned_abs() > CLOCK_TOLERANCE_MS;
    // The counter is checked and advanced in one statement, under the
    // writer: of two copies of one request racing here, one wins and the
    // other is refused with nothing recorded (its savepoint is rolled
    // back).
    let fresh = tx.record_sync(
        device_id,
        &SyncSeen {
            at_ms: now_ms,
            device_clock_ms,
            skew_ms,
            flagged,
            counter,
            report,
        },
    )?;
    if !fresh {
        return Err(replayed(&device, counter));
    }
    if flagged {
        tracing::warn!(device = %device_id, skew_ms, "device clock is off by more than a day");
    }
    if let Some(refused) = check_lineage(tx, &device, lineage, adopted, now_ms)? {
        // Another copy of this store: its counter is recorded (no replay
        // of it either), nothing else; no feed for it.
        return Ok(Written {
            response: SyncResponse {
                request_hash: [0; 32],
                server_time_ms: now_ms,
                acks: Vec::new(),
                refusal: Some(refused),
                next_seq: device.last_seq.saturating_add(1),
                updates: Vec::new(),
                cursor,
                more: false,
                issuances: Vec::new(),
                chain: ChainPosition {
                    seq: device.last_seq,
                    hash: device.last_hash,
                },
                notifications: Vec::new(),
                directory: None,
            },
            proofs: Vec::new(),
            stats: None,
        });
    }
    // A tablet of format 3 adopts the server's position when its own
    // chain disagrees (it lost its last commit): not blocked by that.
    let can_adopt = lineage != [0; 16];

    let ctx = Ctx {
        server,
        device: &device,
        key: &key,
        now_ms,
        today,
        evidence: &evidence,
        roster: &roster,
    };
    let mut chain = Chain {
        last_seq: device.last_seq,
        last_hash: device.last_hash,
    };
    let mut acks = Vec::new();
    if let Some(range) = resume {
        // What arrived before the link went down: acknowledged as the
        // resend of each would be, up to the first change set not here.
        for seq in range.from..=range.to.min(chain.last_seq) {
            let outcome = if let Some(hash) = tx.logged_hash(device_id, seq)? {
                Some((hash, AckOutcome::AlreadyApplied))
            } else {
                tx.set_aside_hash(device_id, seq)?
                    .map(|h| (h, AckOutcome::SetAside))
            };
            let Some((hash, outcome)) = outcome else {
                break;
            };
            acks.push(Ack { seq, hash, outcome });
        }
    }
    if !acks.is_empty() {
        tracing::info!(device = %device_id, resumed = acks.len(), "change sets whose answer was lost acknowledged again");
    }
    let mut refusal = None;
    let mut stats = Stats::default();
    for cs in incoming {
        tx.savepoint(Savepoint::ChangeSet)?;
        // The numbers of a change set rolled back are not reserved: the
        // counter went back with it, and counts them again.
        let numbers = stats.reserve.numbers.len();
        match apply_change_set(tx, &ctx, chain, cs, &mut stats) {
            Ok((ack, next)) => {
                tx.release_savepoint(Savepoint::ChangeSet)?;
                chain = next;
                acks.push(ack);
            }
            Err(Step::Refused(r)) => {
                tx.rollback_to_savepoint(Savepoint::ChangeSet)?;
                stats.reserve.numbers.truncate(numbers);
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
            // The request's savepoint is rolled back by the group, with
            // this change set's inside it.
            Err(Step::Failed(e)) => return Err(e),
            Err(Step::Deferred) => {
                tx.rollback_to_savepoint(Savepoint::ChangeSet)?;
                stats.reserve.numbers.truncate(numbers);
                tracing::info!(device = %device_id, "the request's decompression budget is spent; the rest waits for the next request");
                break;
            }
        }
    }

    let mut feed = tx.server_changes_since(device_id, cursor, FEED_PAGE + 1)?;
    let more = feed.len() > FEED_PAGE;
    feed.truncate(FEED_PAGE);
    let next_cursor = feed.last().map_or(cursor, |c| c.cursor);
    // What the device has been sent, for the feed's lag (`/metrics`).
    tx.set_feed_sent(device_id, next_cursor)?;
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
    // The tablet keeps the server's proof of every code it receives (the
    // proofs are signed after the commit).
    let mut proofs = Vec::new();
    let mut proved = HashSet::new();
    for u in &updates {
        if proved.insert(u.record_id)
            && let Some(k) = tx.issued_kidc(Uuid::from_bytes(u.record_id))?
        {
            proofs.push((u.record_id, k));
        }
    }
    Ok(Written {
        response: SyncResponse {
            request_hash: [0; 32],
            server_time_ms: now_ms,
            acks,
            refusal,
            next_seq: chain.last_seq.saturating_add(1),
            updates,
            cursor: next_cursor,
            more,
            issuances: Vec::new(),
            chain: ChainPosition {
                seq: chain.last_seq,
                hash: chain.last_hash,
            },
            notifications: Vec::new(),
            directory: None,
        },
        proofs,
        stats: Some(stats),
    })
}

/// The store-lineage rule (sync format 3): a request of the device's
/// lineage passes; a request of another lineage passes only if it adopted
/// the device's current chain position (it lost its own, and now takes
/// over the chain), and then its lineage becomes the device's; any other
/// comes from another copy of the store and is refused, by name, and
/// counted. The first lineage a device shows is taken as its own. Format-2
/// requests carry none and are not checked.
pub(super) fn check_lineage(
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
