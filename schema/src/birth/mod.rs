//! Birth registrations: the typed record and the validation of its JSON.
//!
//! Two ways in:
//!
//! * [`validate`] / [`BirthRegistration::from_json_str`] for input from a
//!   person or a tablet. They walk the JSON themselves and report **every**
//!   bad field in one [`ValidationError`], each problem naming the field by
//!   its dotted path (`child.place_of_birth.village_code`) and saying what is
//!   expected. Problem messages never contain the input value: names are
//!   personal data. Names are normalized with [`normalize_name`] (Khmer
//!   script) and [`normalize_latin_name`] (the `_latin` fields).
//!   [`validate_at_office`] also checks the residence against the office
//!   that registers the birth; the tablet and the server use it.
//! * serde's `Deserialize`, for data this system has already validated and
//!   stored. It checks the shape (fields, enums, dates, gazetteer codes) but
//!   not the rules that need a clock or compare fields, and does not
//!   normalize names.
//!
//! The JSON layout (see `shared/fixtures/birth-sok-dara.json`):
//!
//! ```json
//! { "event": "birth",
//!   "child": { "family_name", "given_name"?, "family_name_latin"?, "given_name_latin"?,
//!              "sex", "date_of_birth",
//!              "place_of_birth": { "kind", "facility_name"?, "village_code" } },
//!   "mother": { "family_name", "given_name", "family_name_latin"?, "given_name_latin"?,
//!               "date_of_birth"?, "nationality", "id_document"?: { "kind", "number" } },
//!   "father"?: { same as mother },
//!   "informant": { "relationship", "family_name"?, "given_name"? },
//!   "residence_village_code", "registered_away_from_residence"?,
//!   "remarks"? }
//! ```
//!
//! # Rules beyond the shape
//!
//! * **Text.** No control characters, no bidirectional controls (a
//!   right-to-left override would make a name display as something else)
//!   and no other invisible characters ([`crate::text::is_invisible`]) in
//!   names, the facility name, document numbers and remarks. Khmer fields
//!   (the names without `_latin`, the facility name, the remarks) may
//!   hold the zero-width space and the joiners (U+200B, U+200C, U+200D):
//!   normalization removes the zero-width space and keeps the joiners.
//!   The Latin fields may hold them too, and normalization removes all
//!   three; document numbers may not.
//! * **Dates.** No date after today. The registered person is at most
//!   [`MAX_AGE_YEARS`] old today: late registrations, of adults who were
//!   never registered too, are legitimate (and flagged by
//!   [`BirthRegistration::is_late`]), but nobody alive was born in 1900.
//!   A parent's date of birth, when given, puts their age at the child's
//!   birth in [`MOTHER_AGE_AT_BIRTH`] or [`FATHER_AGE_AT_BIRTH`]; a parent
//!   may be dead, so it is not checked against today.
//! * **Residence** ([`validate_at_office`] only). The residence village lies
//!   in the office's commune, unless `registered_away_from_residence` is
//!   `true`: a family that registers away from home says so explicitly.
//!
//! Serializing a [`BirthRegistration`] omits absent optional fields, so a
//! validated registration serializes back to JSON equal to its input
//! whenever the input's names were already normalized.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::date::Date;
use crate::gazetteer::GazetteerCode;

mod choice;
mod normalize;
mod validator;

#[cfg(test)]
mod tests;

pub use choice::{IdDocumentKind, PlaceKind, Relationship, Sex};
pub use normalize::{normalize_latin_name, normalize_name};
pub(crate) use validator::Role;
pub use validator::{validate, validate_at_office};

use crate::validation::parse_json;
pub use crate::validation::{
    FieldProblem, MAX_AGE_YEARS, MAX_DOCUMENT_NUMBER_CHARS, MAX_FACILITY_NAME_CHARS, MAX_NAME_CHARS,
    MAX_REMARKS_CHARS, ValidationError,
};

/// A registration made more than this many days after the birth is a late
/// registration.
pub const LATE_REGISTRATION_DAYS: i64 = 30;
/// The mother's age at the child's birth, in completed years, when her
/// date of birth is given. Births to girls of 10 and 11 are rare but real,
/// and must be registrable; births after 65 barely exist even with
/// assisted reproduction. A mother of 5, or one born the same day as the
/// child, is a typing error. When the mother's date of birth is not known
/// it is left out.
pub const MOTHER_AGE_AT_BIRTH: std::ops::RangeInclusive<i32> = 10..=65;
/// The father's age at the child's birth, in completed years, when his
/// date of birth is given. Generous at the top: fathers in their 90s are
/// documented.
pub const FATHER_AGE_AT_BIRTH: std::ops::RangeInclusive<i32> = 12..=100;

/// The registered child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Child {
    /// Family name in Khmer script.
    pub family_name: String,
    /// Given name in Khmer script; a child may be registered before the
    /// family has chosen one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// Family name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name_latin: Option<String>,
    /// Given name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name_latin: Option<String>,
    /// Sex.
    pub sex: Sex,
    /// Date of birth; never in the future.
    pub date_of_birth: Date,
    /// Place of birth.
    pub place_of_birth: PlaceOfBirth,
}

/// Where a child was born, or a person died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// Kind of place.
    pub kind: PlaceKind,
    /// Name of the health facility: non-empty when `kind` is
    /// [`PlaceKind::HealthFacility`]; otherwise absent or possibly `""`
    /// (the existing data writes `""` for home births).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility_name: Option<String>,
    /// The village (8-digit gazetteer code) where the event took place.
    pub village_code: GazetteerCode,
}

/// Where a child was born.
pub type PlaceOfBirth = Place;

/// A parent of the child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    /// Family name in Khmer script.
    pub family_name: String,
    /// Given name in Khmer script.
    pub given_name: String,
    /// Family name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name_latin: Option<String>,
    /// Given name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name_latin: Option<String>,
    /// Date of birth, when known (many adults do not know theirs); never
    /// after the child's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    /// Nationality as an ISO 3166-1 alpha-3 code such as `"KHM"`: three
    /// capital ASCII letters.
    pub nationality: String,
    /// The identity document shown, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_document: Option<IdDocument>,
}

/// An identity document shown at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdDocument {
    /// Kind of document.
    pub kind: IdDocumentKind,
    /// The document's number, as printed on it.
    pub number: String,
}

/// The person who declares the birth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Informant {
    /// Relationship to the child.
    pub relationship: Relationship,
    /// Family name in Khmer script (may be omitted, e.g. when the informant
    /// is a parent named in the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// Given name in Khmer script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
}

/// A birth registration, as declared at the office.
///
/// Serialized with the constant field `"event": "birth"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirthRegistration {
    /// The child.
    pub child: Child,
    /// The mother.
    pub mother: Parent,
    /// The father, when declared.
    pub father: Option<Parent>,
    /// Who declared the birth.
    pub informant: Informant,
    /// The village (8-digit gazetteer code) where the child will live.
    pub residence_village_code: GazetteerCode,
    /// The family registers at an office away from home: the residence
    /// village lies outside the office's commune. JSON
    /// `"registered_away_from_residence": true`; `false` is the same as
    /// leaving it out, and is left out when serialized. Old records,
    /// written before the field existed, read as `false`.
    pub registered_away_from_residence: bool,
    /// Free-text remarks by the registrar.
    pub remarks: Option<String>,
}

/// The `"event"` field's only value for this type.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
enum BirthEvent {
    #[serde(rename = "birth")]
    Birth,
}

#[derive(Serialize)]
struct BirthRegistrationOut<'a> {
    event: BirthEvent,
    child: &'a Child,
    mother: &'a Parent,
    #[serde(skip_serializing_if = "Option::is_none")]
    father: Option<&'a Parent>,
    informant: &'a Informant,
    residence_village_code: GazetteerCode,
    #[serde(skip_serializing_if = "is_false")]
    registered_away_from_residence: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    remarks: Option<&'a str>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BirthRegistrationIn {
    event: BirthEvent,
    child: Child,
    mother: Parent,
    #[serde(default)]
    father: Option<Parent>,
    informant: Informant,
    residence_village_code: GazetteerCode,
    #[serde(default)]
    registered_away_from_residence: bool,
    #[serde(default)]
    remarks: Option<String>,
}

impl Serialize for BirthRegistration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BirthRegistrationOut {
            event: BirthEvent::Birth,
            child: &self.child,
            mother: &self.mother,
            father: self.father.as_ref(),
            informant: &self.informant,
            residence_village_code: self.residence_village_code,
            registered_away_from_residence: self.registered_away_from_residence,
            remarks: self.remarks.as_deref(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for BirthRegistration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let BirthRegistrationIn {
            event: BirthEvent::Birth,
            child,
            mother,
            father,
            informant,
            residence_village_code,
            registered_away_from_residence,
            remarks,
        } = BirthRegistrationIn::deserialize(deserializer)?;
        Ok(BirthRegistration {
            child,
            mother,
            father,
            informant,
            residence_village_code,
            registered_away_from_residence,
            remarks,
        })
    }
}

impl BirthRegistration {
    /// Parses and [`validate`]s JSON text. Malformed JSON gives a single
    /// problem for the field `"$"` with its line and column.
    pub fn from_json_str(json: &str, today: Date) -> Result<BirthRegistration, ValidationError> {
        validate(&parse_json(json)?, today)
    }

    /// Parses and [`validate_at_office`]s JSON text, as
    /// [`BirthRegistration::from_json_str`] does.
    pub fn from_json_str_at_office(
        json: &str,
        today: Date,
        office: &GazetteerCode,
    ) -> Result<BirthRegistration, ValidationError> {
        validate_at_office(&parse_json(json)?, today, office)
    }

    /// Same as [`validate`].
    pub fn from_json_value(json: &Value, today: Date) -> Result<BirthRegistration, ValidationError> {
        validate(json, today)
    }

    /// Is this a late registration, made more than
    /// [`LATE_REGISTRATION_DAYS`] days after the birth? Late registrations
    /// are accepted (adults who were never registered included); the flag
    /// is derived, not stored, so statistics can count it on either side.
    pub fn is_late(&self, registered_on: Date) -> bool {
        registered_on.days_since(&self.child.date_of_birth) > LATE_REGISTRATION_DAYS
    }

    /// The registration as JSON, in the layout [`validate`] accepts.
    pub fn to_json_value(&self) -> Value {
        // Serialization to a `Value` can only fail for maps with non-string
        // keys, which these types do not have.
        serde_json::to_value(self).expect("a birth registration always serializes to JSON")
    }
}
