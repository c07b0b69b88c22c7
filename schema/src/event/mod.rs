//! Every vital event: the typed registrations of deaths, marriages,
//! divorces, adoptions and amendments, their validation, and [`Event`],
//! which holds any of them or a birth ([`crate::birth`]).
//!
//! Validation works as the birth's does (the same [`ValidationError`],
//! text rules, dates, places, identity documents): each
//! `validate_*(json, today)` walks the JSON itself and reports **every**
//! bad field at once, by its path (`spouses[0].date_of_birth`), never
//! repeating the input. Names are normalized (Khmer fields with
//! [`crate::birth::normalize_name`], `_latin` fields with
//! [`crate::birth::normalize_latin_name`]); bidirectional controls and
//! other invisible characters are refused. [`validate`] dispatches on the
//! `"event"` field.
//!
//! `today` is the latest date a registration may carry. The server passes
//! its date in Cambodia plus the day of clock difference it tolerates,
//! as it does for births; a tablet passes its own date.
//!
//! Each registration type's own serde form is its fields; the `"event"`
//! field is added by `to_json_value` and by [`Event`]'s serde form,
//! which is the JSON the validators accept. As for births, serde checks
//! the shape, not the rules that compare fields, and does not normalize.
//!
//! # The JSON layouts
//!
//! A *person* (`Person`) is `{ "family_name", "given_name",
//! "family_name_latin"?, "given_name_latin"?, "sex", "nationality",
//! "id_document"?: { "kind", "number" } }`, plus the role's fields below.
//!
//! ```json
//! { "event": "death",
//!   "deceased": { "kidc" } or { person, "date_of_birth"?, "marital_status"?, "residence_village_code" },
//!   "date_of_death",
//!   "place_of_death": { "kind", "facility_name"?, "village_code" },
//!   "cause_of_death": { "text", "icd10"?, "certified_by" },
//!   "informant": { "relationship", "family_name"?, "given_name"?, "id_document"? },
//!   "remarks"? }
//!
//! { "event": "marriage",
//!   "date_of_marriage", "place_of_marriage": { "village_code" },
//!   "spouses": [ two of { person, "date_of_birth", "marital_status_before", "residence_village_code" } ],
//!   "witnesses"?: [ one to four of { "family_name", "given_name", "family_name_latin"?, "given_name_latin"? } ],
//!   "remarks"? }
//!
//! { "event": "divorce",
//!   "spouses": [ two of { "kidc" } or { "family_name"?, "given_name"?, "family_name_latin"?,
//!                "given_name_latin"?, "date_of_birth"?, "id_document"? } ],
//!   "date_of_marriage", "date_of_divorce",
//!   "court_decision": { "court", "number", "date" },
//!   "remarks"? }
//!
//! { "event": "adoption",
//!   "child": { "kidc" },
//!   "adoptive_parents": [ one or two of { person, "date_of_birth" } ],
//!   "court_decision": { "court", "number", "date" },
//!   "remarks"? }
//!
//! { "event": "amendment",
//!   "changes": { "child.given_name": "...", ... },
//!   "reason",
//!   "remarks"? }
//! ```
//!
//! # Rules beyond the shape
//!
//! * **Death.** The deceased by `kidc` (a valid check digit, and nothing
//!   else beside it) or described. The date of death is not in the future
//!   and not before the deceased's date of birth (when given), which is at
//!   most [`crate::birth::MAX_AGE_YEARS`] before it. The ICD-10 code's
//!   form is checked ([`Icd10`]); `certified_by` is one of
//!   [`CertifiedBy`].
//! * **Marriage.** Exactly two spouses, each at least
//!   [`MARRIAGE_MIN_AGE`] on the date of marriage; a spouse whose
//!   `marital_status_before` is `married` is refused (whether the
//!   *registry* knows them as married is checked later, on the server).
//! * **Divorce.** Two spouses, each by `kidc` or by a family name and a
//!   given name (Khmer or Latin) and a date of birth or an identity
//!   document; the divorce and the court decision not before the marriage.
//! * **Adoption.** The child by KIdC; one or two adoptive parents, each at
//!   least [`ADOPTIVE_PARENT_MIN_AGE`] on the date of the court decision.
//! * **Amendment.** `changes` names at least one field of a birth
//!   registration ([`BirthField`]: never a server-owned field such as
//!   `kidc` or `server.kidc`); each new value passes that field's rule;
//!   `reason` is one of [`AmendmentReason`], which may restrict the fields
//!   ([`AmendmentReason::allows`]).

use serde::de::{self, Deserialize, Deserializer};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::birth::{self, BirthRegistration};
use crate::date::Date;
use crate::validation::{Choice, FieldProblem, ValidationError, parse_json};

mod adoption;
mod amendment;
mod choice;
mod court;
mod death;
mod divorce;
mod marriage;
mod person;

#[cfg(test)]
mod tests;

pub use adoption::{ADOPTIVE_PARENT_MIN_AGE, AdoptionRegistration, AdoptiveParent, validate_adoption};
pub use amendment::{Amendment, is_record_id, validate_amendment};
pub use choice::{
    AmendmentReason, BirthField, CertifiedBy, DeathInformantRelationship, EventKind, MaritalStatus,
};
pub use court::CourtDecision;
pub use death::{
    CauseOfDeath, DeathInformant, DeathRegistration, Deceased, Icd10, MAX_CAUSE_OF_DEATH_CHARS,
    validate_death,
};
pub use divorce::{DivorceRegistration, validate_divorce};
pub use marriage::{
    MARRIAGE_MIN_AGE, MAX_WITNESSES, MarriageRegistration, PlaceOfMarriage, Spouse, validate_marriage,
};
pub use person::{ByKidc, Identified, IdentifyingDetails, Person, PersonName};

/// A registration of any vital event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A birth.
    Birth(BirthRegistration),
    /// A death.
    Death(DeathRegistration),
    /// A marriage.
    Marriage(MarriageRegistration),
    /// A divorce.
    Divorce(DivorceRegistration),
    /// An adoption.
    Adoption(AdoptionRegistration),
    /// An amendment of a birth registration.
    Amendment(Amendment),
}

/// Checks a registration's JSON by the rules of the event its `"event"`
/// field names, and returns it typed or every problem found. A document
/// without an `"event"` field (or with `null`) is a birth. `today` as for
/// [`validate_death`]; births are checked by [`crate::birth::validate`].
pub fn validate(json: &Value, today: Date) -> Result<Event, ValidationError> {
    let Value::Object(map) = json else {
        return Err(one_problem("$", "must be an object"));
    };
    let kind = match map.get("event") {
        None | Some(Value::Null) => EventKind::Birth,
        Some(value) => value
            .as_str()
            .and_then(EventKind::parse)
            .ok_or_else(|| one_problem("event", EventKind::expectation()))?,
    };
    Ok(match kind {
        EventKind::Birth if map.get("event").is_some_and(|e| !e.is_null()) => {
            Event::Birth(birth::validate(json, today)?)
        }
        EventKind::Birth => {
            let mut tagged = map.clone();
            tagged.insert("event".to_owned(), Value::from("birth"));
            Event::Birth(birth::validate(&Value::Object(tagged), today)?)
        }
        EventKind::Death => Event::Death(validate_death(json, today)?),
        EventKind::Marriage => Event::Marriage(validate_marriage(json, today)?),
        EventKind::Divorce => Event::Divorce(validate_divorce(json, today)?),
        EventKind::Adoption => Event::Adoption(validate_adoption(json, today)?),
        EventKind::Amendment => Event::Amendment(validate_amendment(json, today)?),
    })
}

fn one_problem(field: &str, problem: impl Into<String>) -> ValidationError {
    ValidationError {
        problems: vec![FieldProblem::new(field, problem)],
    }
}

impl Event {
    /// Parses and [`validate`]s JSON text. Malformed JSON gives a single
    /// problem for the field `"$"` with its line and column.
    pub fn from_json_str(json: &str, today: Date) -> Result<Event, ValidationError> {
        validate(&parse_json(json)?, today)
    }

    /// Which event this is.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Birth(_) => EventKind::Birth,
            Event::Death(_) => EventKind::Death,
            Event::Marriage(_) => EventKind::Marriage,
            Event::Divorce(_) => EventKind::Divorce,
            Event::Adoption(_) => EventKind::Adoption,
            Event::Amendment(_) => EventKind::Amendment,
        }
    }

    /// The registration as JSON, with its `"event"` field, in the layout
    /// [`validate`] accepts.
    pub fn to_json_value(&self) -> Value {
        match self {
            Event::Birth(r) => r.to_json_value(),
            Event::Death(r) => r.to_json_value(),
            Event::Marriage(r) => r.to_json_value(),
            Event::Divorce(r) => r.to_json_value(),
            Event::Adoption(r) => r.to_json_value(),
            Event::Amendment(r) => r.to_json_value(),
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::Birth(r) => r.serialize(serializer),
            other => other.to_json_value().serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut map = Map::<String, Value>::deserialize(deserializer)?;
        let kind = match map.remove("event") {
            None | Some(Value::Null) => EventKind::Birth,
            Some(value) => value
                .as_str()
                .and_then(EventKind::parse)
                .ok_or_else(|| de::Error::custom(format!("event {}", EventKind::expectation())))?,
        };
        if kind == EventKind::Birth {
            map.insert("event".to_owned(), Value::from("birth"));
        }
        let value = Value::Object(map);
        let event = match kind {
            EventKind::Birth => BirthRegistration::deserialize(value).map(Event::Birth),
            EventKind::Death => DeathRegistration::deserialize(value).map(Event::Death),
            EventKind::Marriage => MarriageRegistration::deserialize(value).map(Event::Marriage),
            EventKind::Divorce => DivorceRegistration::deserialize(value).map(Event::Divorce),
            EventKind::Adoption => AdoptionRegistration::deserialize(value).map(Event::Adoption),
            EventKind::Amendment => Amendment::deserialize(value).map(Event::Amendment),
        };
        event.map_err(de::Error::custom)
    }
}

/// `value`'s JSON object with the field `"event": kind` added.
fn tagged_json(kind: EventKind, value: &impl Serialize) -> Value {
    // Serialization to a `Value` can only fail for maps with non-string
    // keys, which these types do not have.
    let mut json = serde_json::to_value(value).expect("a registration always serializes to JSON");
    if let Value::Object(map) = &mut json {
        map.insert("event".to_owned(), Value::from(kind.as_str()));
    }
    json
}
