//! A parent's age at the birth within its range.

use crate::birth::{FATHER_AGE_AT_BIRTH, MOTHER_AGE_AT_BIRTH};
use crate::date::Date;
use crate::validation::Validator;

/// Which parent, for the age range at the child's birth.
#[derive(Clone, Copy)]
pub(crate) enum Role {
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
    /// `None` (reported at `path`) unless a parent born on `parent_dob`,
    /// in `role`, is of a plausible age on `child_dob`.
    pub(crate) fn age_at_birth(
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
