//! Divorce registrations.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EventKind;
use super::court::CourtDecision;
use super::person::{Identified, IdentifyingDetails};
use crate::date::Date;
use crate::validation::{ValidationError, Validator, date_at};

/// A divorce registration. Its JSON carries `"event": "divorce"`, which
/// this type's own serde form leaves to [`super::Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DivorceRegistration {
    /// The two spouses, by KIdC or by identifying details.
    pub spouses: [Identified<IdentifyingDetails>; 2],
    /// The date of the marriage that ends; never in the future.
    pub date_of_marriage: Date,
    /// The date of divorce: not before the date of marriage, never in the
    /// future.
    pub date_of_divorce: Date,
    /// The court decision that pronounced the divorce (dated no earlier
    /// than the marriage).
    pub court_decision: CourtDecision,
    /// Free-text remarks by the registrar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
}

impl DivorceRegistration {
    /// The registration as JSON, with `"event": "divorce"`, in the layout
    /// [`validate_divorce`] accepts.
    pub fn to_json_value(&self) -> Value {
        super::tagged_json(EventKind::Divorce, self)
    }
}

const DIVORCE_FIELDS: &[&str] = &[
    "event",
    "spouses",
    "date_of_marriage",
    "date_of_divorce",
    "court_decision",
    "remarks",
];

/// Checks a divorce registration's JSON against the layout and rules (see
/// [`super`]), and returns it typed (names normalized) or every problem
/// found. `today` as for [`super::validate_death`].
pub fn validate_divorce(json: &Value, today: Date) -> Result<DivorceRegistration, ValidationError> {
    let mut v = Validator::new(today, None);
    let divorce = v.divorce(json);
    v.finish(divorce, "divorce registration")
}

impl Validator {
    fn divorce(&mut self, json: &Value) -> Option<DivorceRegistration> {
        let obj = self.object(json, "", DIVORCE_FIELDS)?;
        let married = date_at(json, "/date_of_marriage")
            .filter(|d| *d <= self.today)
            .map(|d| (d, "the date of marriage"));
        let event = self.required(&obj, "event", |v, value, path| {
            v.event_tag(value, path, "divorce")
        });
        let spouses = self.required(&obj, "spouses", |v, value, path| {
            let spouses = v.list(value, path, (2, 2), |v, value, path| {
                v.identified(value, path, |v, value, path| {
                    v.identifying_details(value, path, married)
                })
            })?;
            <[_; 2]>::try_from(spouses).ok()
        });
        let date_of_marriage = self.required(&obj, "date_of_marriage", Self::past_date);
        let date_of_divorce = self.required(&obj, "date_of_divorce", |v, value, path| {
            let divorced = v.past_date(value, path)?;
            match married {
                Some((married, what)) => v.not_before(divorced, married, path, what),
                None => Some(divorced),
            }
        });
        let court_decision = self.required(&obj, "court_decision", |v, value, path| {
            v.court_decision(value, path, married)
        });
        let remarks = self.optional(&obj, "remarks", Self::remarks);
        event?;
        Some(DivorceRegistration {
            spouses: spouses?,
            date_of_marriage: date_of_marriage?,
            date_of_divorce: date_of_divorce?,
            court_decision: court_decision?,
            remarks: remarks?,
        })
    }
}
