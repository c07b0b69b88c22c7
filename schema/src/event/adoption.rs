//! Adoption registrations.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EventKind;
use super::court::CourtDecision;
use super::person::{ByKidc, NAME_FIELDS, PERSON_FIELDS, Person};
use crate::date::Date;
use crate::validation::{ValidationError, Validator, date_at};

/// An adoptive parent is at least this old, in completed years, on the
/// date of the court decision: the age of majority. (The Civil Code's own
/// conditions, such as the age difference with the child, need the
/// child's record and are checked where the registry is.)
pub const ADOPTIVE_PARENT_MIN_AGE: i32 = 18;

/// An adoption registration. Its JSON carries `"event": "adoption"`,
/// which this type's own serde form leaves to [`super::Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptionRegistration {
    /// The adopted child, by KIdC (a registered child).
    pub child: ByKidc,
    /// One or two adoptive parents.
    pub adoptive_parents: Vec<AdoptiveParent>,
    /// The court decision that pronounced the adoption.
    pub court_decision: CourtDecision,
    /// Free-text remarks by the registrar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
}

/// An adoptive parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptiveParent {
    /// Names, sex, nationality, identity document.
    #[serde(flatten)]
    pub person: Person,
    /// Date of birth: at least [`ADOPTIVE_PARENT_MIN_AGE`] years before
    /// the court decision.
    pub date_of_birth: Date,
}

impl AdoptionRegistration {
    /// The registration as JSON, with `"event": "adoption"`, in the layout
    /// [`validate_adoption`] accepts.
    pub fn to_json_value(&self) -> Value {
        super::tagged_json(EventKind::Adoption, self)
    }
}

const ADOPTION_FIELDS: &[&str] = &["event", "child", "adoptive_parents", "court_decision", "remarks"];

/// Checks an adoption registration's JSON against the layout and rules
/// (see [`super`]), and returns it typed (names normalized) or every
/// problem found. `today` as for [`super::validate_death`].
pub fn validate_adoption(json: &Value, today: Date) -> Result<AdoptionRegistration, ValidationError> {
    let mut v = Validator::new(today, None);
    let adoption = v.adoption(json);
    v.finish(adoption, "adoption registration")
}

impl Validator {
    fn adoption(&mut self, json: &Value) -> Option<AdoptionRegistration> {
        let obj = self.object(json, "", ADOPTION_FIELDS)?;
        let decided_on = date_at(json, "/court_decision/date").filter(|d| *d <= self.today);
        let event = self.required(&obj, "event", |v, value, path| {
            v.event_tag(value, path, "adoption")
        });
        let child = self.required(&obj, "child", Self::by_kidc);
        let parents = self.required(&obj, "adoptive_parents", |v, value, path| {
            v.list(value, path, (1, 2), |v, value, path| {
                v.adoptive_parent(value, path, decided_on)
            })
        });
        let court_decision = self.required(&obj, "court_decision", |v, value, path| {
            v.court_decision(value, path, None)
        });
        let remarks = self.optional(&obj, "remarks", Self::remarks);
        event?;
        Some(AdoptionRegistration {
            child: child?,
            adoptive_parents: parents?,
            court_decision: court_decision?,
            remarks: remarks?,
        })
    }

    fn adoptive_parent(
        &mut self,
        value: &Value,
        path: &str,
        decided_on: Option<Date>,
    ) -> Option<AdoptiveParent> {
        let obj = self.object_of(value, path, &[NAME_FIELDS, PERSON_FIELDS, &["date_of_birth"]])?;
        let person = self.person_in(&obj);
        let date_of_birth = self.required(&obj, "date_of_birth", |v, value, path| {
            let born = v.past_date(value, path)?;
            let on = decided_on.unwrap_or(v.today);
            if born.age_on(on) < ADOPTIVE_PARENT_MIN_AGE {
                v.report(
                    path,
                    format!(
                        "must make the adoptive parent at least {ADOPTIVE_PARENT_MIN_AGE} years old \
                         on the date of the court decision"
                    ),
                );
                return None;
            }
            v.at_most_max_age(born, on, path, "before the court decision")
        });
        Some(AdoptiveParent {
            person: person?,
            date_of_birth: date_of_birth?,
        })
    }
}
