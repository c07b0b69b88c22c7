//! Registering the vital events other than births, and amending a
//! registered birth.
//!
//! Every event is a record of its own, with the same workflow (a clerk
//! submits, a second staff member verifies, a registrar approves or
//! rejects) and the same sync. An amendment is a record of kind
//! `amendment` whose data names the birth record it amends (`amends`);
//! the server registers it, with its own registration number, and writes
//! each field's old and new value into the amended record's server part,
//! from which [`crvs_schema::record::RecordView::current_data`] gives the
//! values as they stand.

use crvs_schema::event::{self, Event, EventKind};
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::record::{self, RecordKind};
use crvs_schema::staff::Role;
use crvs_schema::workflow::{self, Action, Status, Transition};
use crvs_schema::{BirthRegistration, Date, FieldProblem};
use serde_json::Value as Json;

use super::{Actor, RecordId, Registrar, checked_now_ms, lock};
use crate::error::{Error, Result};
use crate::integrity;
use crate::store::{self, RecordRow, meta};

/// What a registrar settles a record with ([`Registrar::settle`]).
#[derive(Debug, Clone, Copy)]
pub enum Settlement<'a> {
    /// The value at this index of the record's conflicting data.
    Take(usize),
    /// A whole registration, as a file holds it.
    Data(&'a str),
}

impl Registrar {
    /// Registers a vital event from its JSON (the fixtures' layout: its
    /// `"event"` field names it; none is a birth), entered by the clerk
    /// `by`. When `expected` is given the file must hold that event (`crvs
    /// death register` refuses a marriage). An amendment is refused here:
    /// it names the record it amends ([`Registrar::amend`]). An invalid
    /// registration gives [`Error::InvalidRecord`] naming every bad field,
    /// and stores nothing.
    pub fn register_event<'a>(
        &self,
        json: &str,
        by: impl Into<Actor<'a>>,
        expected: Option<EventKind>,
    ) -> Result<RecordId> {
        self.register_event_for(json, by, expected, None)
    }

    /// [`Registrar::register_event`] for the birth or death notification
    /// `notification` (an id from [`Registrar::notifications`]): the
    /// submission names it, and once the server registers the record the
    /// notification is registered too (and leaves every tablet's list).
    /// The notification must be pending in this store's list and of the
    /// same event.
    pub fn register_event_for<'a>(
        &self,
        json: &str,
        by: impl Into<Actor<'a>>,
        expected: Option<EventKind>,
        notification: Option<&str>,
    ) -> Result<RecordId> {
        let now = checked_now_ms()?;
        let today = Date::today_in_cambodia(now);
        let event = Event::from_json_str(json, today)?;
        if let Some(kind) = expected
            && event.kind() != kind
        {
            return Err(Error::InvalidRecord(vec![FieldProblem::new(
                "event",
                format!("must be \"{}\" for this command", kind.as_str()),
            )]));
        }
        let event = match event {
            Event::Amendment(_) => {
                return Err(Error::InvalidRecord(vec![FieldProblem::new(
                    "event",
                    "an amendment names the record it amends: use `crvs amend ID FILE`",
                )]));
            }
            // A birth is checked at this office too (the residence).
            Event::Birth(_) => {
                let office = self.office_code()?;
                Event::Birth(BirthRegistration::from_json_str_at_office(json, today, &office)?)
            }
            other => other,
        };
        let kind = RecordKind::of_event(event.kind());
        let notification = match notification {
            Some(nid) => Some(self.pending_notification_of(nid, kind)?),
            None => None,
        };
        let by = self.authorize(by.into(), Some(Role::Clerk))?;
        let id = self.store_new_record(kind, &event.to_json_value(), &by, now, notification)?;
        tracing::info!(record = %id, kind = kind.as_str(), "event registered");
        Ok(id)
    }

    /// The office's notifications not registered yet, as the last sync
    /// brought them, oldest first: `[{notification_id, kind,
    /// received_at_ms, notification}]` (`notification` is what the health
    /// facility or court sent, validated by the server).
    pub fn notifications(&self) -> Result<Vec<Json>> {
        let conn = lock(&self.conn);
        integrity::ensure_intact(&conn, integrity::Scope::All)?;
        let Some(sealed) = store::get_meta::<Vec<u8>>(&conn, meta::NOTIFICATIONS)? else {
            return Ok(Vec::new());
        };
        let bytes = self.key.open(super::NOTIFICATIONS_AAD, &sealed)?;
        let list: Vec<Json> = serde_json::from_slice(&bytes)
            .map_err(|_| Error::Corrupt("the stored notifications are malformed".into()))?;
        // Those this store registered since the last sync are not pending.
        let used: std::collections::HashSet<String> = store::all_records(&conn)?
            .iter()
            .filter(|r| r.kind == "birth" || r.kind == "death")
            .filter_map(|r| record::read(&self.load_doc(r).ok()?).ok())
            .filter_map(|v| v.transitions.first().and_then(|t| t.notification.clone()))
            .collect();
        Ok(list
            .into_iter()
            .filter(|n| n["notification_id"].as_str().is_none_or(|id| !used.contains(id)))
            .collect())
    }

    /// The pending notification `nid`, which a registration of `kind`
    /// answers: its id as stored.
    fn pending_notification_of(&self, nid: &str, kind: RecordKind) -> Result<String> {
        let nid = nid.trim().to_ascii_lowercase();
        let Some(n) = self
            .notifications()?
            .into_iter()
            .find(|n| n["notification_id"].as_str() == Some(nid.as_str()))
        else {
            return Err(Error::NotAllowed(
                "no pending notification with this id on this tablet (sync to receive the office's notifications; a registered one is no longer pending)".into(),
            ));
        };
        if n["kind"].as_str() != Some(kind.as_str()) {
            return Err(Error::NotAllowed(format!(
                "the notification is of a {}, not of a {}",
                n["kind"].as_str().unwrap_or("?"),
                kind.as_str()
            )));
        }
        Ok(nid)
    }

    /// Amends the birth record `target` (approved or registered) with the
    /// amendment JSON (`changes`, `reason`, `remarks`?), entered by the
    /// clerk `by`; returns the amendment's own record id, which goes
    /// through verification and approval like any record. The birth as
    /// amended must still pass the birth's rules. Before approval a record
    /// is not amended: it is corrected or rejected.
    pub fn amend<'a>(&self, target: &RecordId, json: &str, by: impl Into<Actor<'a>>) -> Result<RecordId> {
        let now = checked_now_ms()?;
        let today = Date::today_in_cambodia(now);
        let target_record = self.record(target)?;
        if target_record.view.kind != RecordKind::Birth {
            return Err(Error::NotAllowed("only a birth record can be amended".into()));
        }
        match target_record.view.status() {
            Ok(Status::Approved | Status::Registered) => {}
            _ => {
                return Err(Error::NotAllowed(
                    "only an approved or registered record is amended; before approval, reject it so that it is corrected".into(),
                ));
            }
        }
        let mut amendment = match Event::from_json_str(json, today)? {
            Event::Amendment(a) => a,
            _ => {
                return Err(Error::InvalidRecord(vec![FieldProblem::new(
                    "event",
                    "must be \"amendment\"",
                )]));
            }
        };
        let target_id = target.to_string();
        if amendment.amends.as_deref().is_some_and(|a| a != target_id) {
            return Err(Error::InvalidRecord(vec![FieldProblem::new(
                "amends",
                "names another record than the one given",
            )]));
        }
        amendment.amends = Some(target_id);
        // The birth as amended passes the birth's rules again (a parent's
        // age at the birth, the residence against the office).
        let amended = amendment.apply_to(&target_record.view.current_data());
        crvs_schema::birth::validate_at_office(&amended, today, &self.office_code()?).map_err(|e| {
            Error::InvalidRecord(
                e.problems
                    .into_iter()
                    .map(|p| FieldProblem::new(format!("amended.{}", p.field), p.problem))
                    .collect(),
            )
        })?;
        let data = event::Event::Amendment(amendment).to_json_value();
        let by = self.authorize(by.into(), Some(Role::Clerk))?;
        let id = self.store_new_record(RecordKind::Amendment, &data, &by, now, None)?;
        tracing::info!(record = %id, amends = %target, "amendment registered");
        Ok(id)
    }

    /// Corrects a rejected record with new data (the whole registration,
    /// as a file holds it) and resubmits it, by the clerk `by`: the
    /// record keeps its id and its whole history (the rejection and its
    /// reason stay), and goes through verification and approval again.
    /// The new data is checked as at registration; an amendment must
    /// still amend the same record.
    pub fn correct<'a>(&self, id: &RecordId, json: &str, by: impl Into<Actor<'a>>) -> Result<Status> {
        let now = checked_now_ms()?;
        let today = Date::today_in_cambodia(now);
        let current = self.record(id)?;
        if current.view.status() != Ok(Status::Rejected) {
            return Err(Error::NotAllowed(
                "only a rejected record is corrected and resubmitted".into(),
            ));
        }
        let data = self.checked_data(&current, json, today)?;
        let by = self.authorize(by.into(), Some(Role::for_action(Action::Resubmit)))?;
        let status = self.write_step(id, Action::Resubmit, by, now, None, None, Some(&data))?;
        tracing::info!(record = %id, "record corrected and resubmitted");
        Ok(status)
    }

    fn office_code(&self) -> Result<GazetteerCode> {
        GazetteerCode::parse_level(&self.office, Level::Commune)
            .map_err(|_| Error::Corrupt("the store's office is not a commune code".into()))
    }

    /// Settles a record that two tablets of the office wrote at once (two
    /// corrections of its data, steps that cannot both stand): the
    /// registrar `by` chooses its data, either the value numbered `take`
    /// of `conflicting_data` (as `crvs show` lists them) or a whole new
    /// registration `json`, checked as at registration. The record keeps
    /// every step as history and starts again as submitted, with the
    /// registrar as its clerk: someone else verifies it, a registrar
    /// approves it. `NotAllowed` when there is nothing to settle or the
    /// record is registered.
    pub fn settle<'a>(
        &self,
        id: &RecordId,
        choice: Settlement<'_>,
        by: impl Into<Actor<'a>>,
    ) -> Result<Status> {
        let now = checked_now_ms()?;
        let today = Date::today_in_cambodia(now);
        let current = self.record(id)?;
        if current.view.server.is_registered() {
            return Err(Error::NotAllowed(
                "a registered record is not settled: an amendment changes it".into(),
            ));
        }
        if current.view.conflicts.is_empty() && workflow::derive(&current.view.transitions).is_ok() {
            return Err(Error::NotAllowed(
                "nothing to settle: the record's data and steps are not in conflict".into(),
            ));
        }
        let data = match choice {
            Settlement::Take(i) => {
                let doc = {
                    let conn = lock(&self.conn);
                    let row = store::get_record(&conn, &id.0)?.ok_or(Error::NotFound)?;
                    self.load_doc(&row)?
                };
                let mut values = record::data_values(&doc)?;
                if i >= values.len() {
                    return Err(Error::InvalidInput(format!(
                        "--take must be 0 to {}: the record holds {} value(s) of its data",
                        values.len().saturating_sub(1),
                        values.len()
                    )));
                }
                let chosen = values.swap_remove(i);
                self.checked_data(&current, &chosen.to_string(), today)?
            }
            Settlement::Data(json) => self.checked_data(&current, json, today)?,
        };
        let by = self.authorize(by.into(), Some(Role::for_action(Action::Settle)))?;
        let status = self.write_step(id, Action::Settle, by, now, None, None, Some(&data))?;
        tracing::info!(record = %id, "record settled");
        Ok(status)
    }

    /// New data for the record `current` (a correction, a settlement):
    /// the whole registration, checked as at registration (a birth at this
    /// office); an amendment must still amend the same record.
    fn checked_data(&self, current: &super::Record, json: &str, today: Date) -> Result<Json> {
        Ok(match current.view.kind {
            RecordKind::Birth => {
                BirthRegistration::from_json_str_at_office(json, today, &self.office_code()?)?.to_json_value()
            }
            kind => {
                let event = Event::from_json_str(json, today)?;
                if RecordKind::of_event(event.kind()) != kind {
                    return Err(Error::InvalidRecord(vec![FieldProblem::new(
                        "event",
                        format!("must be \"{}\", the event of the record corrected", kind.as_str()),
                    )]));
                }
                match event {
                    Event::Amendment(mut a) => {
                        let target = current
                            .view
                            .data
                            .get("amends")
                            .and_then(Json::as_str)
                            .map(str::to_owned);
                        if a.amends.is_some() && a.amends != target {
                            return Err(Error::InvalidRecord(vec![FieldProblem::new(
                                "amends",
                                "names another record than the one amended",
                            )]));
                        }
                        a.amends = target;
                        Event::Amendment(a).to_json_value()
                    }
                    other => other.to_json_value(),
                }
            }
        })
    }

    /// Stores a new record of `kind` with `data`, submitted by `by`.
    fn store_new_record(
        &self,
        kind: RecordKind,
        data: &Json,
        by: &str,
        now: i64,
        notification: Option<String>,
    ) -> Result<RecordId> {
        let mut conn = lock(&self.conn);
        let submission = Transition {
            action: Action::Submit,
            by: by.trim().to_string(),
            at_ms: now,
            device: self.device_label(&conn)?,
            reason: None,
            notification,
            code: None,
        };
        let status = workflow::check_append(&[], &submission)?;
        let id = RecordId::at(now);
        let mut doc = record::new_record(self.actor.clone(), kind, &self.office, data, &submission)?;
        let row = RecordRow {
            id: id.0,
            kind: kind.as_str().to_string(),
            status: status.as_str().to_string(),
            created_at: now,
            updated_at: now,
            doc_sealed: self.seal_doc(&id.0, &mut doc),
            kidc_sealed: None,
            outboxed_heads: Vec::new(),
            dirty: true,
            last_outbox_seq: None,
            server_updated_at: None,
            set_aside_at: None,
        };
        let tx = conn.transaction()?;
        store::insert_record(&tx, &row)?;
        tx.commit()?;
        Ok(id)
    }
}
