//! Marriage registrations.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::person::{NAME_FIELDS, PERSON_FIELDS, Person, PersonName};
use super::{EventKind, MaritalStatus};
use crate::date::Date;
use crate::gazetteer::GazetteerCode;
use crate::validation::{ValidationError, Validator, date_at};

/// The legal minimum age to marry, in completed years on the date of
/// marriage.
pub const MARRIAGE_MIN_AGE: i32 = 18;
/// At most this many witnesses are recorded.
pub const MAX_WITNESSES: usize = 4;

/// A marriage registration, as declared at the office. Its JSON carries
/// `"event": "marriage"`, which this type's own serde form leaves to
/// [`super::Event`].
///
/// Whether a spouse is already married *in the registry* is not checked
/// here: this crate has no registry. The registration is refused here
/// only when it says so itself (`marital_status_before: "married"`); the
/// registry's check is later work, on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarriageRegistration {
    /// The date of marriage; never in the future.
    pub date_of_marriage: Date,
    /// Where the marriage took place.
    pub place_of_marriage: PlaceOfMarriage,
    /// The two spouses, each at least [`MARRIAGE_MIN_AGE`] on the date of
    /// marriage.
    pub spouses: [Spouse; 2],
    /// The witnesses, when recorded (1 to [`MAX_WITNESSES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<PersonName>,
    /// Free-text remarks by the registrar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
}

/// Where a marriage took place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOfMarriage {
    /// The village (8-digit gazetteer code).
    pub village_code: GazetteerCode,
}

/// A spouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spouse {
    /// Names, sex, nationality, identity document.
    #[serde(flatten)]
    pub person: Person,
    /// Date of birth: required, for the minimum age.
    pub date_of_birth: Date,
    /// Marital status before this marriage: never `married`.
    pub marital_status_before: MaritalStatus,
    /// The village (8-digit gazetteer code) where the spouse lives.
    pub residence_village_code: GazetteerCode,
}

impl MarriageRegistration {
    /// The registration as JSON, with `"event": "marriage"`, in the layout
    /// [`validate_marriage`] accepts.
    pub fn to_json_value(&self) -> Value {
        super::tagged_json(EventKind::Marriage, self)
    }
}

const MARRIAGE_FIELDS: &[&str] = &[
    "event",
    "date_of_marriage",
    "place_of_marriage",
    "spouses",
    "witnesses",
    "remarks",
];
const SPOUSE_FIELDS: &[&str] = &["date_of_birth", "marital_status_before", "residence_village_code"];

/// Checks a marriage registration's JSON against the layout and rules
/// (see [`super`]), and returns it typed (names normalized) or every
/// problem found. `today` as for [`super::validate_death`].
pub fn validate_marriage(json: &Value, today: Date) -> Result<MarriageRegistration, ValidationError> {
    let mut v = Validator::new(today, None);
    let marriage = v.marriage(json);
    v.finish(marriage, "marriage registration")
}

impl Validator {
    fn marriage(&mut self, json: &Value) -> Option<MarriageRegistration> {
        let obj = self.object(json, "", MARRIAGE_FIELDS)?;
        let married_on = date_at(json, "/date_of_marriage").filter(|d| *d <= self.today);
        let event = self.required(&obj, "event", |v, value, path| {
            v.event_tag(value, path, "marriage")
        });
        let date_of_marriage = self.required(&obj, "date_of_marriage", Self::past_date);
        let place = self.required(&obj, "place_of_marriage", |v, value, path| {
            let obj = v.object(value, path, &["village_code"])?;
            let village_code = v.required(&obj, "village_code", Self::village_code)?;
            Some(PlaceOfMarriage { village_code })
        });
        let spouses = self.required(&obj, "spouses", |v, value, path| {
            let spouses = v.list(value, path, (2, 2), |v, value, path| {
                v.spouse(value, path, married_on)
            })?;
            <[Spouse; 2]>::try_from(spouses).ok()
        });
        let witnesses = self.optional(&obj, "witnesses", |v, value, path| {
            v.list(value, path, (1, MAX_WITNESSES), Self::person_name)
        });
        let remarks = self.optional(&obj, "remarks", Self::remarks);
        event?;
        Some(MarriageRegistration {
            date_of_marriage: date_of_marriage?,
            place_of_marriage: place?,
            spouses: spouses?,
            witnesses: witnesses?.unwrap_or_default(),
            remarks: remarks?,
        })
    }

    fn spouse(&mut self, value: &Value, path: &str, married_on: Option<Date>) -> Option<Spouse> {
        let obj = self.object_of(value, path, &[NAME_FIELDS, PERSON_FIELDS, SPOUSE_FIELDS])?;
        let person = self.person_in(&obj);
        let date_of_birth = self.required(&obj, "date_of_birth", |v, value, path| {
            let born = v.past_date(value, path)?;
            let Some(married) = married_on else {
                return v.alive_today(born, path);
            };
            if born.age_on(married) < MARRIAGE_MIN_AGE {
                v.report(
                    path,
                    format!(
                        "must make the spouse at least {MARRIAGE_MIN_AGE} years old on the date of \
                         marriage (the legal minimum age)"
                    ),
                );
                return None;
            }
            v.at_most_max_age(born, married, path, "before the date of marriage")
        });
        let status = self.required(&obj, "marital_status_before", |v, value, path| match v
            .choice::<MaritalStatus>(value, path)?
        {
            MaritalStatus::Married => {
                v.report(
                    path,
                    "must not be married: a person still married cannot marry again (a divorce \
                         or the spouse's death must be registered first)",
                );
                None
            }
            status => Some(status),
        });
        let residence = self.required(&obj, "residence_village_code", Self::village_code);
        Some(Spouse {
            person: person?,
            date_of_birth: date_of_birth?,
            marital_status_before: status?,
            residence_village_code: residence?,
        })
    }
}
