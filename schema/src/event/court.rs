//! A court's decision, which a divorce and an adoption need.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::date::Date;
use crate::validation::{MAX_FACILITY_NAME_CHARS, Validator};

/// The court decision that pronounced a divorce or an adoption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourtDecision {
    /// The court's name, e.g. "សាលាដំបូងខេត្តសៀមរាប" (free text,
    /// normalized like a name, at most [`MAX_FACILITY_NAME_CHARS`]
    /// characters).
    pub court: String,
    /// The decision's number as written on it, e.g. "123/2026" (the rule
    /// of a document number).
    pub number: String,
    /// The date of the decision; never in the future.
    pub date: Date,
}

const COURT_DECISION_FIELDS: &[&str] = &["court", "number", "date"];

impl Validator {
    /// A [`CourtDecision`] dated no earlier than `earliest`, when given
    /// (`what` names it).
    pub(crate) fn court_decision(
        &mut self,
        value: &Value,
        path: &str,
        earliest: Option<(Date, &str)>,
    ) -> Option<CourtDecision> {
        let obj = self.object(value, path, COURT_DECISION_FIELDS)?;
        let court = self.required(&obj, "court", |v, value, path| {
            v.free_text(value, path, MAX_FACILITY_NAME_CHARS)
        });
        let number = self.required(&obj, "number", Self::document_number);
        let date = self.required(&obj, "date", |v, value, path| {
            let date = v.past_date(value, path)?;
            match earliest {
                Some((earliest, what)) => v.not_before(date, earliest, path, what),
                None => Some(date),
            }
        });
        Some(CourtDecision {
            court: court?,
            number: number?,
            date: date?,
        })
    }
}
