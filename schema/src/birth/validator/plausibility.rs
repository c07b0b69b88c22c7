//! Dates and ages that make sense: no date after today, nobody older than
//! [`MAX_AGE_YEARS`], a parent's age at the birth within its range.

use serde_json::Value;

use super::Validator;
use crate::birth::{FATHER_AGE_AT_BIRTH, MAX_AGE_YEARS, MOTHER_AGE_AT_BIRTH};
use crate::date::Date;

/// Which parent, for the age range at the child's birth.
#[derive(Clone, Copy)]
pub(super) enum Role {
    Mother,
    Father,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Mother => "mother",
            Role::Father => "father",
        }
    }

    fn ages(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Role::Mother => MOTHER_AGE_AT_BIRTH,
            Role::Father => FATHER_AGE_AT_BIRTH,
        }
    }
}

impl Validator {
    /// A date that exists and is not after `today`.
    pub(super) fn past_date(&mut self, value: &Value, path: &str) -> Option<Date> {
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
    pub(super) fn alive_today(&mut self, dob: Date, path: &str) -> Option<Date> {
        if dob.age_on(self.today) > MAX_AGE_YEARS {
            self.report(path, format!("must not be more than {MAX_AGE_YEARS} years ago"));
            return None;
        }
        Some(dob)
    }

    /// `None` (reported at `path`) unless a parent born on `parent_dob`,
    /// in `role`, is of a plausible age on `child_dob`.
    pub(super) fn age_at_birth(
        &mut self,
        parent_dob: Date,
        child_dob: Date,
        role: Role,
        path: &str,
    ) -> Option<Date> {
        let ages = role.ages();
        let problem = if parent_dob > child_dob {
            Some("must not be after the child's date of birth".to_owned())
        } else if !ages.contains(&parent_dob.age_on(child_dob)) {
            Some(format!(
                "must make the {} {} to {} years old at the child's birth (leave it out if unknown)",
                role.word(),
                ages.start(),
                ages.end()
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.report(path, problem);
                None
            }
            None => Some(parent_dob),
        }
    }
}
