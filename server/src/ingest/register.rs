//! Under the writer: registering an approved record. Everything here
//! depends on the registry's state, so it runs in the transaction that
//! stores the record, after every check that needs no state was done
//! before the writer ([`super::prepare`]).
//!
//! In this order, the first that fails holds the record (a hold, never a
//! refusal: the tablet's outbox must not block on a content problem, and
//! a registrar sees the reason):
//!
//! 1. an amendment's record must exist in the record's office, be a birth,
//!    and be registered (`unknown_record`, `not_registered`), and the birth
//!    with the amendment made must still validate (`invalid_on_receipt`);
//! 2. the registry's checks ([`crate::registry::check`]): an unknown KIdC,
//!    someone already deceased or married, a divorce of a marriage it does
//!    not know;
//! 3. a birth's KIdC is issued (`kidc_conflict` when a code from before a
//!    restore cannot be recorded again);
//! 4. the registration number: office / year / sequence, the sequence
//!    counted per office and year ([`WriteTx::next_registration_seq`]),
//!    never below what the KIdC ledger holds; a record the ledger holds a
//!    number for gets it again (`registration_number`);
//! 5. the server part is written: the number, the time, a birth's code and
//!    the late flag; an amendment's changes go into the amended record's
//!    server part, with their old values.

use automerge::AutoCommit;
use crvs_schema::Date;
use crvs_schema::event::{Amendment, Event};
use crvs_schema::record::{self, AppliedAmendment, FieldChange, RecordKind, Registration};
use crvs_schema::workflow::Status;
use uuid::Uuid;

use crate::ledger::RegistrationNumber;
use crate::storage::{FeedTo, StoredRecord, WriteTx};

use super::kidc::{Issued, issue_kidc};
use super::prepare::{Plan, commit_server_change, saved_blob, validate_birth};
use super::{Ctx, HOLD_INVALID_ON_RECEIPT, HOLD_KIDC_CONFLICT, Stats, Step, internal};

/// The hold code of an amendment whose record the server does not have in
/// the office.
pub const HOLD_UNKNOWN_RECORD: &str = "unknown_record";
/// The hold code of an amendment of a record that is not (yet) registered.
pub const HOLD_NOT_REGISTERED: &str = "not_registered";

/// What registering a record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Registered: its number, and a birth's code.
    Registered {
        number: String,
        kidc: Option<crvs_schema::Kidc>,
    },
    /// Held for review, with the reason code.
    Held(&'static str),
}

/// Registers the approved record `record_id` of `office` (see the module
/// documentation), writing the server part into `doc` with the server's
/// actor (the caller commits the change).
#[allow(clippy::too_many_arguments)]
pub(super) fn register(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    record_id: Uuid,
    office: &str,
    doc: &mut AutoCommit,
    plan: Plan,
    seq: u64,
    stats: &mut Stats,
) -> Result<Outcome, Step> {
    let failed = |_| internal("writing the server part of a record failed");
    doc.set_actor(ctx.server.actor().clone());
    let hold = |doc: &mut AutoCommit, code: &'static str| -> Result<Outcome, Step> {
        record::set_hold(doc, code).map_err(failed)?;
        tracing::info!(record = %record_id, hold = code, "record held on registration");
        Ok(Outcome::Held(code))
    };
    let amended = match &plan.event {
        Event::Amendment(a) => match amended_record(tx, ctx, office, a)? {
            Ok(target) => Some(target),
            Err(code) => return hold(doc, code),
        },
        _ => None,
    };
    if let Some(code) = crate::registry::check(tx, &plan.event, amended.as_ref().map(|t| &t.registry))? {
        return hold(doc, code);
    }
    let kidc = match plan.kidc {
        Some((drawn, category)) => match issue_kidc(tx, ctx, record_id, seq, category, drawn, stats)? {
            Issued::Code(k) => {
                stats.kidcs += 1;
                Some(k)
            }
            Issued::Conflict => return hold(doc, HOLD_KIDC_CONFLICT),
        },
        None => None,
    };
    let today = Date::today_in_cambodia(ctx.now_ms);
    let number = registration_number(tx, ctx, record_id, office, today.year(), stats)?.to_string();
    let late = match &plan.event {
        Event::Birth(b) => today.days_since(&b.child.date_of_birth) > i64::from(ctx.server.late_birth_days()),
        _ => false,
    };
    record::set_registration(
        doc,
        &Registration {
            kidc,
            number: number.clone(),
            at_ms: ctx.now_ms,
            late,
        },
    )
    .map_err(failed)?;
    if let Some(nid) = plan.notification {
        let kind = plan.event.kind().as_str();
        if tx.register_notification(nid, record_id, office, kind, ctx.now_ms)? {
            tracing::info!(record = %record_id, notification = %nid, "notification registered");
        } else {
            // Registered before, of another event or office, or unknown:
            // the registration stands; the notification stays as it was.
            tracing::warn!(record = %record_id, notification = %nid, "the notification a registration names is not pending for it");
        }
    }
    if let (Some(target), Event::Amendment(a)) = (amended.as_ref(), &plan.event) {
        amend_record(tx, ctx, record_id, &number, a, target)?;
    }
    crate::registry::apply(
        tx,
        &crate::registry::RegisteredEvent {
            record_id,
            registration_number: &number,
            registered_at_ms: ctx.now_ms,
            office,
            event: &plan.event,
            kidc,
            amends: amended.map(|t| t.registry),
            late,
        },
    )?;
    tracing::debug!(record = %record_id, kind = plan.event.kind().as_str(), late, "record registered");
    Ok(Outcome::Registered { number, kidc })
}

/// The record's registration number (see the module documentation of
/// [`crate::ledger`]): the one the KIdC ledger holds for it, if it holds
/// one (issued before the database was restored from a backup, or before
/// a commit a crash lost), with the database's counter raised to it;
/// otherwise the next of `office` in `year`, counted above both the
/// database's counter and the highest number the ledger holds, and pushed
/// to `stats.reserve`, for the ledger.
fn registration_number(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    record_id: Uuid,
    office: &str,
    year: i32,
    stats: &mut Stats,
) -> Result<RegistrationNumber, Step> {
    let ledger = ctx.server.ledger();
    if let Some(n) = ledger.number_for(record_id)? {
        if n.office != office {
            tracing::error!(record = %record_id, "the ledger holds a registration number of another office for this record");
            return Err(internal(
                "the ledger holds a registration number of another office for a record",
            ));
        }
        tx.raise_registration_counter(&n.office, n.year, n.seq)?;
        stats.numbers_again += 1;
        tracing::info!(record = %record_id, "a registration number issued before given again, from the ledger");
        return Ok(n);
    }
    let above = ledger.highest_seq(office, year)?;
    let seq = tx.next_registration_seq(office, year, above)?;
    let n = RegistrationNumber {
        office: office.to_owned(),
        year,
        seq,
    };
    stats.reserve.numbers.push((n.clone(), record_id));
    Ok(n)
}

/// The record an amendment amends, loaded.
pub(super) struct Target {
    stored: StoredRecord,
    view: record::RecordView,
    registry: crate::registry::Amended,
}

/// The registered birth of `office` that `a` amends, or the hold code.
fn amended_record(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    office: &str,
    a: &Amendment,
) -> Result<Result<Target, &'static str>, Step> {
    let Some(id) = a.amends.as_deref().and_then(|s| Uuid::parse_str(s).ok()) else {
        return Ok(Err(HOLD_INVALID_ON_RECEIPT));
    };
    let Some(stored) = tx.load_record(id)? else {
        return Ok(Err(HOLD_UNKNOWN_RECORD));
    };
    if stored.office != office {
        return Ok(Err(HOLD_UNKNOWN_RECORD));
    }
    let doc =
        AutoCommit::load(&stored.doc).map_err(|_| internal("a stored record document does not load"))?;
    let view = record::read(&doc).map_err(|_| internal("a stored record does not read"))?;
    if view.kind != RecordKind::Birth {
        return Ok(Err(HOLD_UNKNOWN_RECORD));
    }
    if view.status().ok() != Some(Status::Registered) {
        return Ok(Err(HOLD_NOT_REGISTERED));
    }
    // The birth as amended must pass the birth's rules again (a parent's
    // age at the birth, the residence against the office).
    let mut amended_view = view.clone();
    amended_view.data = a.apply_to(&view.current_data());
    if validate_birth(&amended_view, ctx.today).is_err() {
        return Ok(Err(HOLD_INVALID_ON_RECEIPT));
    }
    let registry = crate::registry::Amended {
        record_id: id,
        kidc: view.server.kidc,
    };
    Ok(Ok(Target {
        stored,
        view,
        registry,
    }))
}

/// Writes the registered amendment into the amended record's server part
/// (each field with its old and new value), stores it and feeds the change
/// to the device that holds it.
fn amend_record(
    tx: &mut dyn WriteTx,
    ctx: &Ctx<'_>,
    amendment_id: Uuid,
    number: &str,
    a: &Amendment,
    target: &Target,
) -> Result<(), Step> {
    let failed = |_| internal("writing the server part of a record failed");
    let current = target.view.current_data();
    let changes = a
        .old_values(&current)
        .into_iter()
        .map(|(field, from)| FieldChange {
            field: field.as_str().to_owned(),
            from,
            to: a.changes.get(&field).cloned().unwrap_or_default(),
        })
        .collect();
    let mut doc = AutoCommit::load(&target.stored.doc)
        .map_err(|_| internal("a stored record document does not load"))?
        .with_actor(ctx.server.actor().clone());
    record::add_amendment(
        &mut doc,
        AppliedAmendment {
            amendment_id: amendment_id.to_string(),
            registration_number: number.to_owned(),
            registered_at_ms: ctx.now_ms,
            reason: a.reason.as_str().to_owned(),
            changes,
        },
    )
    .map_err(failed)?;
    let Some(change) = commit_server_change(&mut doc) else {
        return Ok(());
    };
    let blob = saved_blob(&mut doc, Some(&target.stored), &[], std::slice::from_ref(&change));
    tx.update_record(&StoredRecord {
        doc: blob,
        updated_at_ms: ctx.now_ms,
        ..target.stored.clone()
    })?;
    tx.append_feed(
        FeedTo::Office(&target.stored.office),
        target.stored.record_id,
        &change,
        ctx.now_ms,
    )?;
    Ok(())
}
