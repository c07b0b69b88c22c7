//! The pure part of applying a record's changes: decode, apply, check,
//! re-validate, and the server's own edits.

use std::collections::HashSet;

use automerge::{AutoCommit, Change, ChangeHash};
use crvs_schema::birth::{self, BirthRegistration, FieldProblem, ValidationError};
use crvs_schema::bounds;
use crvs_schema::event::{self, Event};
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::kidc::Category;
use crvs_schema::record::{self, RecordKind, TabletChangeError};
use crvs_schema::wire::{RecordChanges, RefusalCode};
use crvs_schema::workflow::{self, Status};
use crvs_schema::{Date, Kidc};
use uuid::Uuid;

use crate::storage::StoredRecord;

use super::apply::tablet_change_refusal;
use super::{
    COMPACT_ABOVE, Ctx, HOLD_DATA_CONFLICT, HOLD_INVALID_ON_RECEIPT, HOLD_INVALID_WORKFLOW,
    HOLD_STAFF_NOT_AUTHORIZED, Step, internal, refuse,
};

/// A record with the tablet's changes applied and checked, and the
/// server's early edits (a hold) committed, ready to be registered (if
/// approved) and stored under the writer.
pub(super) struct Prepared {
    pub(super) record_id: Uuid,
    pub(super) stored: Option<StoredRecord>,
    /// The tablet's bytes the stored document did not have, ready to be
    /// appended to it verbatim: a document chunk, or change chunks.
    pub(super) fresh: Vec<u8>,
    pub(super) office: String,
    pub(super) kind: RecordKind,
    pub(super) status: Status,
    /// The hold the server set now, if it did.
    pub(super) new_hold: Option<&'static str>,
    /// A hold lifted now by a registrar's settlement: the hold's reason
    /// and the registrar's staff id, for the release audit.
    pub(super) lifted: Option<(String, String)>,
    /// The registration to make under the writer, for an approved record
    /// whose data validates.
    pub(super) register: Option<Plan>,
    /// The document, the server's early change committed.
    pub(super) doc: AutoCommit,
    /// The server's early change, to store and to feed to the device.
    pub(super) server_change: Option<Vec<u8>>,
}

/// What registering an approved record needs: its event, typed and
/// validated, and for a birth the KIdC drawn before the writer.
pub(super) struct Plan {
    pub(super) event: Event,
    /// A birth's code, drawn (not yet in the issuance log), and category.
    pub(super) kidc: Option<(Kidc, Category)>,
    /// The notification the submission names, if any.
    pub(super) notification: Option<Uuid>,
}

/// The pure part of applying one record's changes: decode, apply, check,
/// and the server's own edits, committed; `None` when the changes hold
/// nothing the stored record does not already have.
///
/// Automerge's decoder panics on some malformed documents whose checksum
/// is valid (a buggy or hostile tablet can send one): such a panic is a
/// `malformed` refusal of the change set, like any other undecodable
/// input, not a failed request that the tablet would retry forever.
pub(super) fn prepare_record(
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

pub(super) fn bounds_refusal(seq: u64, e: &bounds::BoundsError) -> Step {
    match e {
        bounds::BoundsError::TooManyBytes(_) | bounds::BoundsError::TooManyEntries(_) => {
            refuse(seq, RefusalCode::TooLarge, e.to_string())
        }
        other => refuse(seq, RefusalCode::Malformed, other.to_string()),
    }
}

pub(super) fn prepare_record_inner(
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

    let old_steps = match &before {
        Some(b) => record::read(b).map(|v| v.transitions).unwrap_or_default(),
        None => Vec::new(),
    };
    let new_steps: Vec<&workflow::Transition> = view
        .transitions
        .iter()
        .filter(|t| !old_steps.contains(t))
        .collect();
    // The roster's re-check: every step this change set adds must be by
    // someone on the office's roster at its time, with the role it needs.
    let staff_problem = ctx.roster.in_force() && new_steps.iter().any(|t| !ctx.roster.authorizes(t));
    // A registrar's settlement answers a record the server holds for what
    // two tablets wrote at once, before its registration; anywhere else it
    // is a workflow problem.
    let settled_by = new_steps
        .iter()
        .rev()
        .find(|t| t.action == workflow::Action::Settle)
        .map(|t| t.by.clone());
    let settle_hold = matches!(
        view.server.hold.as_deref(),
        Some(HOLD_DATA_CONFLICT | HOLD_INVALID_WORKFLOW)
    );
    let settle_refused = settled_by.is_some() && (view.server.is_registered() || !settle_hold);
    let lift = settled_by.is_some()
        && !settle_refused
        && !workflow_problem
        && !staff_problem
        && view.conflicts.is_empty();

    let mut new_hold: Option<&'static str> = None;
    let mut register = None;
    let mut lifted = None;
    let mut view = view;
    if lift && let (Some(reason), Some(by)) = (view.server.hold.take(), settled_by) {
        tracing::info!(record = %record_id, hold = %reason, "hold lifted: a registrar settled the record");
        lifted = Some((reason, by));
    }
    if workflow_problem {
        if view.server.hold.is_none() {
            new_hold = Some(HOLD_INVALID_WORKFLOW);
            tracing::info!(record = %record_id, "record held: its workflow breaks the rules");
        }
    } else if staff_problem {
        if view.server.hold.as_deref() != Some(HOLD_STAFF_NOT_AUTHORIZED) {
            new_hold = Some(HOLD_STAFF_NOT_AUTHORIZED);
            tracing::warn!(
                record = %record_id,
                device = %ctx.device.device_id,
                "record held: a workflow step is by someone the office's roster does not allow"
            );
        }
    } else if settle_refused {
        if view.server.hold.is_none() {
            new_hold = Some(HOLD_INVALID_WORKFLOW);
            tracing::info!(record = %record_id, "record held: a settlement of a record with nothing to settle");
        }
    } else if !view.conflicts.is_empty() && !view.server.is_registered() {
        // Two tablets wrote the data concurrently: both values are kept,
        // and a person settles it; nothing is registered meanwhile.
        if view.server.hold.as_deref() != Some(HOLD_DATA_CONFLICT) {
            new_hold = Some(HOLD_DATA_CONFLICT);
            tracing::info!(record = %record_id, "record held: its data was written concurrently on two tablets");
        }
    } else if !view.server.is_registered() && view.server.hold.is_none() {
        match validate_event(&view, ctx.today) {
            Ok(event) => {
                let tablet_status = workflow::derive(&view.transitions)
                    .map_err(|e| refuse(seq, RefusalCode::InvalidRecord, e.to_string()))?;
                if tablet_status == Some(Status::Approved) {
                    register = Some(plan(ctx, record_id, event, &view));
                }
            }
            Err(problems) => {
                new_hold = Some(HOLD_INVALID_ON_RECEIPT);
                // A count only: an unknown key's name is the tablet's text.
                tracing::info!(
                    record = %record_id,
                    kind = view.kind.as_str(),
                    problems = problems.problems.len(),
                    "record held: its data does not validate on receipt (server's date, device's office)"
                );
            }
        }
    }
    // The status before the registration, which happens under the writer.
    if let Some(code) = new_hold {
        view.server.hold = Some(code.to_string());
    }
    let status = if workflow_problem {
        // A registered record keeps its registration; the hold flags it.
        if view.server.is_registered() {
            Status::Registered
        } else {
            Status::Held
        }
    } else {
        view.status()
            .map_err(|e| refuse(seq, RefusalCode::InvalidRecord, e.to_string()))?
    };
    let mut doc = doc;
    let server_change = match (new_hold, &lifted) {
        (Some(code), _) => {
            doc.set_actor(ctx.server.actor().clone());
            record::set_hold(&mut doc, code)
                .map_err(|_| internal("writing the server part of a record failed"))?;
            commit_server_change(&mut doc)
        }
        (None, Some(_)) => {
            doc.set_actor(ctx.server.actor().clone());
            record::clear_hold(&mut doc)
                .map_err(|_| internal("writing the server part of a record failed"))?;
            commit_server_change(&mut doc)
        }
        (None, None) => None,
    };
    let stored_len = stored.as_ref().map_or(0, |s| s.doc.len());
    if stored_len + fresh.len() > MAX_RECORD_DOC_BYTES {
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
        lifted,
        register,
        doc,
        server_change,
    }))
}

/// The registration plan of an approved record whose event validated: a
/// birth's code is drawn now, off the writer.
pub(super) fn plan(ctx: &Ctx<'_>, record_id: Uuid, event: Event, view: &record::RecordView) -> Plan {
    let kidc = match &event {
        Event::Birth(reg) => {
            let category = kidc_category(reg);
            // A code the server proved it issued before (the database was
            // restored since) is the one to record again; otherwise a
            // fresh draw, checked against the issuance log and the ledger
            // in `issue_kidc`. `rand::rng()` is a CSPRNG seeded from the
            // operating system.
            let drawn = match ctx.evidence.get(record_id.as_bytes()) {
                Some(k) => *k,
                None => Kidc::generate(category, &mut rand::rng()),
            };
            Some((drawn, category))
        }
        _ => None,
    };
    let notification = view
        .transitions
        .first()
        .and_then(|t| t.notification.as_deref())
        .and_then(|n| Uuid::parse_str(n).ok());
    Plan {
        event,
        kidc,
        notification,
    }
}

/// Commits the server's edits made on `doc` (with the server's actor) and
/// returns the change's bytes, if there were edits.
pub(super) fn commit_server_change(doc: &mut AutoCommit) -> Option<Vec<u8>> {
    doc.commit()
        .and_then(|_| doc.get_last_local_change())
        .map(|c| c.raw_bytes().to_vec())
}

pub(super) fn server_actor_refusal(seq: u64) -> Step {
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
pub(super) fn apply_tablet_changes(
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
pub(super) fn validate_birth(
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

/// The server's re-validation of any record's event: a birth as
/// [`validate_birth`]; another event by its own rules, which must be the
/// event the record's kind names (an amendment must name the record it
/// amends).
pub(super) fn validate_event(view: &record::RecordView, latest: Date) -> Result<Event, ValidationError> {
    if view.kind == RecordKind::Birth {
        return validate_birth(view, latest).map(Event::Birth);
    }
    let event = event::validate(&view.data, latest)?;
    if RecordKind::of_event(event.kind()) != view.kind {
        return Err(ValidationError {
            problems: vec![FieldProblem::new(
                "event",
                "must be the event the record's kind names",
            )],
        });
    }
    if let Event::Amendment(a) = &event
        && a.amends.is_none()
    {
        return Err(ValidationError {
            problems: vec![FieldProblem::new("amends", "must name the record amended")],
        });
    }
    Ok(event)
}

/// **KIdC category:** citizen when either parent's nationality is `KHM`.
pub(super) fn kidc_category(reg: &BirthRegistration) -> Category {
    if reg.mother.nationality == "KHM" || reg.father.as_ref().is_some_and(|f| f.nationality == "KHM") {
        Category::CITIZEN
    } else {
        Category::FOREIGN_RESIDENT
    }
}

/// The bytes to store: the stored bytes with the fresh ones and the
/// server's changes appended, or a compacted `save()` once that grows large.
pub(super) fn saved_blob(
    doc: &mut AutoCommit,
    stored: Option<&StoredRecord>,
    fresh: &[u8],
    changes: &[Vec<u8>],
) -> Vec<u8> {
    let stored_len = stored.map_or(0, |s| s.doc.len());
    let added = fresh.len() + changes.iter().map(Vec::len).sum::<usize>();
    if stored.is_some() && stored_len + added > COMPACT_ABOVE {
        doc.save()
    } else {
        let mut b = Vec::with_capacity(stored_len + added);
        b.extend_from_slice(stored.map_or(&[][..], |s| &s.doc));
        b.extend_from_slice(fresh);
        for c in changes {
            b.extend_from_slice(c);
        }
        b
    }
}
