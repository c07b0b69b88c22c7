//! Under the writer: one change set checked against the device's chain
//! and applied, record by record.

use std::collections::HashSet;

use crvs_schema::record::TabletChangeError;
use crvs_schema::wire::{Ack, AckOutcome, Refusal, RefusalCode};
use crvs_schema::workflow::Status;
use uuid::Uuid;

use crate::storage::{FeedTo, LogEntry, StoredRecord, WriteTx};

use super::open::{Incoming, OpenedBody, Pending, wire_refusal};
use super::prepare::{Prepared, commit_server_change, prepare_record, saved_blob};
use super::register::{Outcome, register};
use super::{Chain, Ctx, Stats, Step, internal, par_map, refuse};

/// Applies one signed change set, or says why not. On success returns its
/// acknowledgement and the device's new chain position. The codes counted
/// for the metrics (`Stats::issued`) go back when it fails: its savepoint
/// is rolled back, and its codes with it.
pub(super) fn apply_change_set(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    chain: Chain,
    incoming: Incoming,
    stats: &mut Stats,
) -> Result<(Ack, Chain), Step> {
    let issued = stats.issued;
    let result = apply_one(tx, ctx, chain, incoming, stats);
    if result.is_err() {
        stats.issued = issued;
    }
    result
}

fn apply_one(
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

pub(super) fn tablet_change_refusal(seq: u64, e: TabletChangeError) -> Step {
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
pub(super) fn apply_records(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    seq: u64,
    records: Vec<Pending>,
    stats: &mut Stats,
) -> Result<(), Step> {
    // Records an operator set aside take no more changes: ignored, not
    // refused (the tablet stops sending them once it learns).
    let ids: Vec<Uuid> = records.iter().map(|p| Uuid::from_bytes(p.rc.record_id)).collect();
    let set_aside = tx.set_aside_among(&ids)?;
    let mut kept = Vec::with_capacity(records.len());
    for p in records {
        if set_aside.contains(&Uuid::from_bytes(p.rc.record_id)) {
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

/// Loads a record, refusing one of another office: a record belongs to its
/// office, and any tablet of the office may continue it.
pub(super) fn load_owned(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    seq: u64,
    record_id: [u8; 16],
) -> Result<Option<StoredRecord>, Step> {
    let stored = tx.load_record(Uuid::from_bytes(record_id))?;
    if stored.as_ref().is_some_and(|s| s.office != ctx.device.office) {
        return Err(refuse(
            seq,
            RefusalCode::OutOfScope,
            "the record belongs to another office",
        ));
    }
    Ok(stored)
}

/// The storage part of applying one record: register it if it is
/// approved ([`register`]), store the document, feed the server's changes
/// to the device.
pub(super) fn finish_record(
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
        lifted,
        register: plan,
        mut doc,
        server_change,
    } = p;
    stats.records += 1;
    let mut hold = new_hold;
    let mut changes: Vec<Vec<u8>> = server_change.into_iter().collect();
    if let Some(plan) = plan {
        match register(tx, ctx, record_id, &office, &mut doc, plan, seq, stats)? {
            Outcome::Registered { .. } => status = Status::Registered,
            Outcome::Held(code) => {
                status = Status::Held;
                hold = Some(code);
            }
        }
        changes.extend(commit_server_change(&mut doc));
    }
    let record = StoredRecord {
        record_id,
        office,
        origin_device: ctx.device.device_id,
        kind: kind.as_str().to_string(),
        status: status.as_str().to_string(),
        doc: saved_blob(&mut doc, stored.as_ref(), &fresh, &changes),
        updated_at_ms: ctx.now_ms,
    };
    if stored.is_some() {
        tx.update_record(&record)?;
    } else {
        tx.insert_record(&record)?;
    }
    // The office's other tablets receive this tablet's changes, and every
    // tablet of the office the server's.
    if !fresh.is_empty() {
        let to = FeedTo::OfficeExcept {
            office: &record.office,
            from: ctx.device.device_id,
        };
        tx.append_feed(to, record_id, &fresh, ctx.now_ms)?;
    }
    for c in &changes {
        tx.append_feed(FeedTo::Office(&record.office), record_id, c, ctx.now_ms)?;
    }
    if let Some((reason, by)) = &lifted {
        tx.audit_release(&crate::storage::ReleaseAudit {
            record_id,
            hold_reason: reason,
            by,
            why: "settled by a registrar on a tablet of the office",
            at_ms: ctx.now_ms,
            outcome: "released",
        })?;
    }
    if let Some(reason) = hold {
        stats.holds += 1;
        tx.insert_hold(record_id, &record.office, reason, ctx.now_ms)?;
    }
    tracing::debug!(record = %record_id, seq, status = status.as_str(), "record applied");
    Ok(())
}
