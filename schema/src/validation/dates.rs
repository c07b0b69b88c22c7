//! Dates that make sense: no date after today, nobody older than
//! [`MAX_AGE_YEARS`], one date not before another.

use serde_json::Value;

use super::{MAX_AGE_YEARS, Validator};
use crate::date::Date;

impl Validator {
    /// A date that exists and is not after `today`.
    pub(crate) fn past_date(&mut self, value: &Value, path: &str) -> Option<Date> {
        let Some(s) = value.as_str() else {
            self.report(path, "must be a date YYYY-MM-DD (a string)");
            return None;
        };
        match Date::parse(s) {
            Ok(date) if date > self.today => {
                self.report(path, "must not be in the future");
                None
            }
            Ok(date) => Some(date),
            Err(_) => {
                self.report(path, "must be a date YYYY-MM-DD that exists");
                None
            }
        }
    }

    /// `None` (reported at `path`) when someone born on `dob` would be
    /// more than [`MAX_AGE_YEARS`] old today.
    pub(crate) fn alive_today(&mut self, dob: Date, path: &str) -> Option<Date> {
        self.at_most_max_age(dob, self.today, path, "ago")
    }

    /// `None` (reported at `path`) when someone born on `dob` would be
    /// more than [`MAX_AGE_YEARS`] old on `on`, the date of the event
    /// that `event` names ("before the date of death").
    pub(crate) fn at_most_max_age(&mut self, dob: Date, on: Date, path: &str, event: &str) -> Option<Date> {
        if dob.age_on(on) > MAX_AGE_YEARS {
            self.report(
                path,
                format!("must not be more than {MAX_AGE_YEARS} years {event}"),
            );
            return None;
        }
        Some(dob)
    }

    /// `None` (reported at `path`) when `date` is before `earliest`;
    /// `what` names `earliest` ("the date of marriage").
    pub(crate) fn not_before(&mut self, date: Date, earliest: Date, path: &str, what: &str) -> Option<Date> {
        if date < earliest {
            self.report(path, format!("must not be before {what}"));
            return None;
        }
        Some(date)
    }
}
