//! [`validate`] and [`validate_at_office`]: the walk over a registration's
//! JSON that reports every bad field at once. The checks shared with the
//! other events (text fields, dates, places, documents) are in
//! [`crate::validation`], the parents' ages in [`plausibility`].

use serde_json::Value;

use super::{BirthRegistration, Child, Informant, Parent, Relationship, Sex, ValidationError};
use crate::date::Date;
use crate::gazetteer::GazetteerCode;
use crate::validation::Validator;

mod plausibility;

pub(crate) use plausibility::Role;

/// Checks a birth registration's JSON against the expected layout and
/// rules, and returns it typed (names normalized) or every problem found.
///
/// `today` is the current date in Cambodia (see
/// [`Date::today_in_cambodia`]): dates after it are rejected.
pub fn validate(json: &Value, today: Date) -> Result<BirthRegistration, ValidationError> {
    validate_with(json, today, None)
}

/// [`validate`], for a registration made at `office` (the commune code of
/// the tablet's office): the residence village must lie in that commune,
/// unless the registration says `"registered_away_from_residence": true`,
/// which it may say only when the residence lies outside. The tablet
/// checks this before storing a registration, and the server again on
/// receipt.
pub fn validate_at_office(
    json: &Value,
    today: Date,
    office: &GazetteerCode,
) -> Result<BirthRegistration, ValidationError> {
    validate_with(json, today, Some(office))
}

fn validate_with(
    json: &Value,
    today: Date,
    office: Option<&GazetteerCode>,
) -> Result<BirthRegistration, ValidationError> {
    let mut v = Validator::new(today, office.copied());
    let registration = v.registration(json);
    v.finish(registration, "birth registration")
}

const REGISTRATION_FIELDS: &[&str] = &[
    "event",
    "child",
    "mother",
    "father",
    "informant",
    "residence_village_code",
    "registered_away_from_residence",
    "remarks",
];
const CHILD_FIELDS: &[&str] = &[
    "family_name",
    "given_name",
    "family_name_latin",
    "given_name_latin",
    "sex",
    "date_of_birth",
    "place_of_birth",
];
const PARENT_FIELDS: &[&str] = &[
    "family_name",
    "given_name",
    "family_name_latin",
    "given_name_latin",
    "date_of_birth",
    "nationality",
    "id_document",
];
const INFORMANT_FIELDS: &[&str] = &["relationship", "family_name", "given_name"];

impl Validator {
    fn registration(&mut self, json: &Value) -> Option<BirthRegistration> {
        let obj = self.object(json, "", REGISTRATION_FIELDS)?;
        // The child's date of birth, if readable, for the parents' checks;
        // the child's own check reports its problems.
        let child_dob = json
            .pointer("/child/date_of_birth")
            .and_then(Value::as_str)
            .and_then(|s| Date::parse(s).ok());

        let event = self.required(&obj, "event", |v, value, path| v.event_tag(value, path, "birth"));
        let child = self.required(&obj, "child", Self::child);
        let mother = self.required(&obj, "mother", |v, value, path| {
            v.parent(value, path, child_dob, Role::Mother)
        });
        let father = self.optional(&obj, "father", |v, value, path| {
            v.parent(value, path, child_dob, Role::Father)
        });
        let informant = self.required(&obj, "informant", Self::informant);
        let mut residence = self.required(&obj, "residence_village_code", Self::village_code);
        let mut away = self.optional(&obj, "registered_away_from_residence", Self::boolean);
        let remarks = self.optional(&obj, "remarks", Self::remarks);
        if let (Some(office), Some(code), Some(is_away)) = (self.office, residence, away) {
            let is_away = is_away.unwrap_or(false);
            let at_home = code.is_within(&office);
            if !at_home && !is_away {
                self.report(
                    "residence_village_code",
                    "must be a village of this office's commune; for a family registering \
                     away from home, set registered_away_from_residence to true",
                );
                residence = None;
            } else if at_home && is_away {
                self.report(
                    "registered_away_from_residence",
                    "must not be true: the residence village is in this office's commune",
                );
                away = None;
            }
        }

        event?;
        Some(BirthRegistration {
            child: child?,
            mother: mother?,
            father: father?,
            informant: informant?,
            residence_village_code: residence?,
            registered_away_from_residence: away?.unwrap_or(false),
            remarks: remarks?,
        })
    }

    fn child(&mut self, value: &Value, path: &str) -> Option<Child> {
        let obj = self.object(value, path, CHILD_FIELDS)?;
        let family_name = self.required(&obj, "family_name", Self::name);
        let given_name = self.optional(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let sex = self.required(&obj, "sex", Self::choice::<Sex>);
        let date_of_birth = self
            .required(&obj, "date_of_birth", Self::past_date)
            .and_then(|dob| self.alive_today(dob, &obj.path("date_of_birth")));
        let place_of_birth = self.required(&obj, "place_of_birth", |v, value, path| {
            v.place(value, path, "birth")
        });
        Some(Child {
            family_name: family_name?,
            given_name: given_name?,
            family_name_latin: family_name_latin?,
            given_name_latin: given_name_latin?,
            sex: sex?,
            date_of_birth: date_of_birth?,
            place_of_birth: place_of_birth?,
        })
    }

    fn parent(&mut self, value: &Value, path: &str, child_dob: Option<Date>, role: Role) -> Option<Parent> {
        let obj = self.object(value, path, PARENT_FIELDS)?;
        let family_name = self.required(&obj, "family_name", Self::name);
        let given_name = self.required(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let mut date_of_birth = self.optional(&obj, "date_of_birth", Self::past_date);
        if let (Some(Some(parent_dob)), Some(child_dob)) = (date_of_birth, child_dob)
            && self
                .age_at_birth(parent_dob, child_dob, role, &obj.path("date_of_birth"))
                .is_none()
        {
            date_of_birth = None;
        }
        let nationality = self.required(&obj, "nationality", Self::nationality);
        let id_document = self.optional(&obj, "id_document", Self::id_document);
        Some(Parent {
            family_name: family_name?,
            given_name: given_name?,
            family_name_latin: family_name_latin?,
            given_name_latin: given_name_latin?,
            date_of_birth: date_of_birth?,
            nationality: nationality?,
            id_document: id_document?,
        })
    }

    fn informant(&mut self, value: &Value, path: &str) -> Option<Informant> {
        let obj = self.object(value, path, INFORMANT_FIELDS)?;
        let relationship = self.required(&obj, "relationship", Self::choice::<Relationship>);
        let family_name = self.optional(&obj, "family_name", Self::name);
        let given_name = self.optional(&obj, "given_name", Self::name);
        Some(Informant {
            relationship: relationship?,
            family_name: family_name?,
            given_name: given_name?,
        })
    }
}
