//! [`validate`] and [`validate_at_office`]: the walk over a registration's
//! JSON that reports every bad field at once. The checks of text fields
//! are in [`text`], those of dates and ages in [`plausibility`].

use serde_json::{Map, Value};

use super::{
    BirthRegistration, Child, Choice, FieldProblem, IdDocument, IdDocumentKind, Informant, Parent, PlaceKind,
    PlaceOfBirth, Relationship, Sex, ValidationError,
};
use crate::date::Date;
use crate::gazetteer::{GazetteerCode, GazetteerError, Level};

mod plausibility;
mod text;

use plausibility::Role;

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
    let mut v = Validator {
        today,
        office: office.copied(),
        problems: Vec::new(),
    };
    let registration = v.registration(json);
    match registration {
        Some(registration) if v.problems.is_empty() => Ok(registration),
        _ => {
            if v.problems.is_empty() {
                // Unreachable: every `None` comes with a problem.
                v.report("$", "is not a valid birth registration");
            }
            Err(ValidationError { problems: v.problems })
        }
    }
}

/// `parent.key`, or `key` at the top level.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Can an unknown key be shown in a problem's field path? Only short,
/// plain identifiers: anything else might be personal data.
fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A JSON object being checked, with its path.
struct Obj<'v> {
    map: &'v Map<String, Value>,
    path: String,
}

impl<'v> Obj<'v> {
    /// The field's value; `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

/// Collects problems while walking the JSON. Each check returns `None`
/// exactly when it has reported a problem.
struct Validator {
    today: Date,
    office: Option<GazetteerCode>,
    problems: Vec<FieldProblem>,
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
const PLACE_FIELDS: &[&str] = &["kind", "facility_name", "village_code"];
const PARENT_FIELDS: &[&str] = &[
    "family_name",
    "given_name",
    "family_name_latin",
    "given_name_latin",
    "date_of_birth",
    "nationality",
    "id_document",
];
const ID_DOCUMENT_FIELDS: &[&str] = &["kind", "number"];
const INFORMANT_FIELDS: &[&str] = &["relationship", "family_name", "given_name"];

impl Validator {
    fn report(&mut self, field: &str, problem: impl Into<String>) {
        let field = if field.is_empty() { "$" } else { field };
        self.problems.push(FieldProblem::new(field, problem));
    }

    /// `value` must be an object; reports its unknown fields.
    fn object<'v>(&mut self, value: &'v Value, path: &str, allowed: &[&str]) -> Option<Obj<'v>> {
        let Value::Object(map) = value else {
            self.report(path, "must be an object");
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                if is_plain_key(key) {
                    self.report(&join(path, key), "unknown field");
                } else {
                    self.report(&join(path, "*"), "unknown field with an unusual name");
                }
            }
        }
        Some(Obj {
            map,
            path: path.to_owned(),
        })
    }

    /// A required field: absent or `null` is a problem.
    fn required<T>(
        &mut self,
        obj: &Obj<'_>,
        key: &str,
        check: impl FnOnce(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<T> {
        let path = obj.path(key);
        match obj.get(key) {
            Some(value) => check(self, value, &path),
            None => {
                self.report(&path, "is required");
                None
            }
        }
    }

    /// An optional field: `Some(None)` when absent or `null`, `None` when
    /// present but bad.
    fn optional<T>(
        &mut self,
        obj: &Obj<'_>,
        key: &str,
        check: impl FnOnce(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        match obj.get(key) {
            Some(value) => check(self, value, &obj.path(key)).map(Some),
            None => Some(None),
        }
    }

    fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        let s = value.as_str();
        if s.is_none() {
            self.report(path, "must be a string");
        }
        s
    }

    fn choice<T: Choice>(&mut self, value: &Value, path: &str) -> Option<T> {
        let parsed = value.as_str().and_then(T::parse);
        if parsed.is_none() {
            self.report(path, T::expectation());
        }
        parsed
    }

    fn village_code(&mut self, value: &Value, path: &str) -> Option<GazetteerCode> {
        let s = self.string(value, path)?;
        match GazetteerCode::parse_level(s, Level::Village) {
            Ok(code) => Some(code),
            Err(e @ GazetteerError::WrongLevel { .. }) => {
                self.report(path, e.to_string());
                None
            }
            Err(e) => {
                self.report(path, format!("must be an 8-digit village code: it {e}"));
                None
            }
        }
    }

    fn nationality(&mut self, value: &Value, path: &str) -> Option<String> {
        match value.as_str() {
            Some(s) if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) => Some(s.to_owned()),
            _ => {
                self.report(
                    path,
                    "must be an ISO 3166-1 alpha-3 country code (3 capital letters)",
                );
                None
            }
        }
    }

    fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        let b = value.as_bool();
        if b.is_none() {
            self.report(path, "must be true or false");
        }
        b
    }

    fn event(&mut self, value: &Value, path: &str) -> Option<()> {
        if value.as_str() == Some("birth") {
            Some(())
        } else {
            self.report(path, "must be \"birth\"");
            None
        }
    }

    fn registration(&mut self, json: &Value) -> Option<BirthRegistration> {
        let obj = self.object(json, "", REGISTRATION_FIELDS)?;
        // The child's date of birth, if readable, for the parents' checks;
        // the child's own check reports its problems.
        let child_dob = json
            .pointer("/child/date_of_birth")
            .and_then(Value::as_str)
            .and_then(|s| Date::parse(s).ok());

        let event = self.required(&obj, "event", Self::event);
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
        let place_of_birth = self.required(&obj, "place_of_birth", Self::place_of_birth);
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

    fn place_of_birth(&mut self, value: &Value, path: &str) -> Option<PlaceOfBirth> {
        let obj = self.object(value, path, PLACE_FIELDS)?;
        let kind = self.required(&obj, "kind", Self::choice::<PlaceKind>);
        let facility_name = self.optional(&obj, "facility_name", Self::facility_name);
        let village_code = self.required(&obj, "village_code", Self::village_code);
        let no_facility_name = match &facility_name {
            Some(Some(name)) => name.is_empty(),
            Some(None) => true,
            None => false, // present but bad: already reported
        };
        if kind == Some(PlaceKind::HealthFacility) && no_facility_name {
            self.report(
                &obj.path("facility_name"),
                "is required for a birth in a health facility",
            );
            return None;
        }
        Some(PlaceOfBirth {
            kind: kind?,
            facility_name: facility_name?,
            village_code: village_code?,
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

    fn id_document(&mut self, value: &Value, path: &str) -> Option<IdDocument> {
        let obj = self.object(value, path, ID_DOCUMENT_FIELDS)?;
        let kind = self.required(&obj, "kind", Self::choice::<IdDocumentKind>);
        let number = self.required(&obj, "number", Self::document_number);
        Some(IdDocument {
            kind: kind?,
            number: number?,
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
