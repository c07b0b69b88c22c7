//! An operator's release of a held record.

use std::collections::HashMap;

use automerge::AutoCommit;
use crvs_schema::record;
use crvs_schema::workflow::{self, Status};
use crvs_schema::{Date, Kidc};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::storage::{FeedTo, ReleaseAudit, StoredRecord};

use super::prepare::{commit_server_change, plan, validate_event};
use super::register::{Outcome, register};
use super::{CLOCK_TOLERANCE_MS, Ctx, Stats, Step};

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
    // An operator's release decides: the roster is not checked again.
    let roster = crate::staff::RosterHistory::default();
    let ctx = Ctx {
        server,
        device: &device,
        key: &key,
        now_ms,
        today,
        evidence: &evidence,
        roster: &roster,
    };
    let mut problems = Vec::new();
    let tablet_status = match workflow::derive(&view.transitions) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("workflow: {e}"));
            None
        }
    };
    let mut event = None;
    match validate_event(&view, today) {
        Ok(e) => event = Some(e),
        Err(e) => problems.extend(e.problems.iter().map(|p| format!("{}: {}", p.field, p.problem))),
    }
    let mut stats = Stats::default();
    let mut kidc = None;
    doc.set_actor(server.actor().clone());
    if problems.is_empty()
        && tablet_status == Some(Status::Approved)
        && !view.server.is_registered()
        && let Some(event) = event
    {
        // The device's last sequence number stands for "released by an
        // operator" in the issuance log's `seq` column.
        match register(
            &mut *tx,
            &ctx,
            record_id,
            &stored.office,
            &mut doc,
            plan(&ctx, record_id, event, &view),
            device.last_seq,
            &mut stats,
        ) {
            Ok(Outcome::Registered { kidc: k, .. }) => kidc = k,
            Ok(Outcome::Held(code)) => problems.push(code.to_string()),
            Err(Step::Failed(e)) => return Err(e),
            Err(_) => return Err(ApiError::Internal("registering the record failed".into())),
        }
    }
    let released = problems.is_empty();
    let mut status = view.status().unwrap_or(Status::Held);
    if released {
        let failed = |_| ApiError::Internal("writing the server part of a record failed".into());
        record::clear_hold(&mut doc).map_err(failed)?;
        let change = commit_server_change(&mut doc);
        let after = record::read(&doc)
            .map_err(|e| ApiError::Internal(format!("a released record does not read: {e}")))?;
        status = after.status().unwrap_or(Status::Held);
        let office = stored.office.clone();
        tx.update_record(&StoredRecord {
            status: status.as_str().to_string(),
            doc: doc.save(),
            updated_at_ms: now_ms,
            ..stored
        })?;
        if let Some(c) = change {
            tx.append_feed(FeedTo::Office(&office), record_id, &c, now_ms)?;
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
