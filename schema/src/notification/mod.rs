//! Notifications of births and deaths from health facility systems and
//! courts: the body of the server's `POST /v1/notifications`, one typed
//! struct per kind, and [`validate`], the walk over its JSON that reports
//! every bad field at once, by its dotted path, and never repeats a value.
//!
//! These types are the one description of a notification: [`validate`]
//! builds them, the server stores them as JSON, and (with the `openapi`
//! feature, which derives `utoipa::ToSchema`) the server's OpenAPI
//! document is generated from them, so the document cannot drift from
//! what is accepted. serde's `Deserialize` is for stored notifications
//! only (already validated); input goes through [`validate`].
//!
//! The rules are those of the registrations ([`crate::birth`],
//! [`crate::event`]), checked by the same code: names normalized and at
//! most [`MAX_NAME_CHARS`] characters; no control characters, no
//! bidirectional controls and no invisible characters except the
//! zero-width space and the joiners in Khmer and Latin text (none in
//! document numbers and identifiers); dates that exist and are not after
//! today in Cambodia; nobody older than [`MAX_AGE_YEARS`]; the mother
//! [`MOTHER_AGE_AT_BIRTH`] at the child's birth; 8-digit village codes of
//! the gazetteer.
//!
//! [`MAX_NAME_CHARS`]: crate::birth::MAX_NAME_CHARS
//! [`MAX_AGE_YEARS`]: crate::birth::MAX_AGE_YEARS
//! [`MOTHER_AGE_AT_BIRTH`]: crate::birth::MOTHER_AGE_AT_BIRTH

use serde::{Deserialize, Serialize};

use crate::birth::{IdDocumentKind, PlaceKind, Sex};
use crate::date::Date;
use crate::gazetteer::GazetteerCode;

#[cfg(feature = "openapi")]
mod openapi;
mod validate;

pub use validate::{MAX_CAUSE_CHARS, MAX_REFERENCE_CHARS, MAX_SYSTEM_CHARS, WEIGHT_GRAMS, validate};

/// A notification of a birth or a death, from a health facility's system
/// or a court. `kind` says which.
///
/// (Each kind carries its own `kind` field rather than serde's internal
/// tag: the document then describes each kind as one closed object, where
/// an internal tag would sit beside an object that refuses unknown
/// fields, which a strict validator reads as refusing `kind`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Notification {
    /// `"kind": "birth"`.
    Birth(BirthNotification),
    /// `"kind": "death"`.
    Death(DeathNotification),
}

impl Notification {
    /// `birth` or `death`.
    pub fn kind(&self) -> &'static str {
        match self {
            Notification::Birth(_) => "birth",
            Notification::Death(_) => "death",
        }
    }

    /// Who sent it, and under which reference.
    pub fn source(&self) -> &Source {
        match self {
            Notification::Birth(b) => &b.source,
            Notification::Death(d) => &d.source,
        }
    }

    /// The village of residence (of the child's family; of the deceased).
    pub fn residence_village_code(&self) -> GazetteerCode {
        match self {
            Notification::Birth(b) => b.residence_village_code,
            Notification::Death(d) => d.residence_village_code,
        }
    }
}

/// Who sends the notification, and its own reference for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The sending system, as it names itself (`HMIS`, a court's case
    /// system): 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "HMIS")
    )]
    pub system: String,
    /// The health facility's (or court's) code in the sending system: 1 to
    /// 64 of `A-Z a-z 0-9 . _ -`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._-]{1,64}$", example = "HF-171003-01")
    )]
    pub facility_code: Option<String>,
    /// The health facility's (or court's) name, in Khmer script; at most
    /// 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub facility_name: Option<String>,
    /// The sender's own reference for this notification, unique within its
    /// system: 1 to 128 of `A-Z a-z 0-9 . _ - / :`. Sending the same
    /// notification again under the same reference is answered with the
    /// same `notification_id` and creates nothing; another notification
    /// under a reference already used is refused (`409 conflict`).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9._/:-]{1,128}$", example = "HMIS-2026-000123")
    )]
    pub reference: String,
}

/// `"birth"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BirthKind {
    /// A birth.
    Birth,
}

/// `"death"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeathKind {
    /// A death.
    Death,
}

/// A birth notified by the health facility where it took place (or by a
/// court).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BirthNotification {
    /// Always `birth`.
    pub kind: BirthKind,
    /// The sender and its reference.
    pub source: Source,
    /// The child.
    pub child: NotifiedChild,
    /// Where the child was born.
    pub place_of_birth: NotifiedPlace,
    /// The mother.
    pub mother: NotifiedMother,
    /// The village (8-digit gazetteer code) where the family lives: the
    /// notification goes to the tablets of that village's commune.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::village_code_schema))]
    pub residence_village_code: GazetteerCode,
}

/// The child of a notified birth. The names are optional: the family may
/// not have chosen them yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NotifiedChild {
    /// Family name in Khmer script (at most 100 characters, normalized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub family_name: Option<String>,
    /// Given name in Khmer script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub given_name: Option<String>,
    /// Family name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub family_name_latin: Option<String>,
    /// Given name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub given_name_latin: Option<String>,
    /// Sex.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::sex_schema))]
    pub sex: Sex,
    /// Date of birth; not after today (in Cambodia), at most 120 years ago.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::date_schema))]
    pub date_of_birth: Date,
    /// Time of birth, 24-hour `HH:MM`, local time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$", example = "06:40")
    )]
    pub time_of_birth: Option<String>,
    /// Weight at birth in grams, 200 to 9000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 200, maximum = 9000))]
    pub weight_grams: Option<u32>,
    /// A single or a multiple birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_of_birth: Option<BirthType>,
}

/// A single or a multiple birth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BirthType {
    /// One child.
    Single,
    /// Twins.
    Twin,
    /// Triplets or more.
    TripletOrMore,
}

impl BirthType {
    /// Every value, in declaration order.
    pub const ALL: &'static [BirthType] = &[BirthType::Single, BirthType::Twin, BirthType::TripletOrMore];

    /// The value's JSON string.
    pub const fn as_str(self) -> &'static str {
        match self {
            BirthType::Single => "single",
            BirthType::Twin => "twin",
            BirthType::TripletOrMore => "triplet_or_more",
        }
    }

    /// The value whose JSON string is `s`, if any.
    pub fn parse(s: &str) -> Option<BirthType> {
        BirthType::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

impl crate::validation::Choice for BirthType {
    const ALL: &'static [Self] = BirthType::ALL;

    fn as_str(self) -> &'static str {
        BirthType::as_str(self)
    }

    fn parse(s: &str) -> Option<Self> {
        BirthType::parse(s)
    }
}

/// Where a birth or a death took place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NotifiedPlace {
    /// Kind of place.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::place_kind_schema))]
    pub kind: PlaceKind,
    /// The facility's name, when it is not the sender's (at most 200
    /// characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub facility_name: Option<String>,
    /// The village (8-digit gazetteer code) where it took place.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::village_code_schema))]
    pub village_code: GazetteerCode,
}

/// The mother of a notified birth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NotifiedMother {
    /// Family name in Khmer script (at most 100 characters, normalized).
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub family_name: String,
    /// Given name in Khmer script.
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub given_name: String,
    /// Family name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub family_name_latin: Option<String>,
    /// Given name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub given_name_latin: Option<String>,
    /// Date of birth, when known: she is 10 to 65 years old at the child's
    /// birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::date_schema))]
    pub date_of_birth: Option<Date>,
    /// Nationality, ISO 3166-1 alpha-3 (`KHM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{3}$", example = "KHM"))]
    pub nationality: Option<String>,
    /// An identity document of hers, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_document: Option<NotifiedIdDocument>,
}

/// An identity document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NotifiedIdDocument {
    /// Kind of document.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::id_document_kind_schema))]
    pub kind: IdDocumentKind,
    /// Its number as printed (at most 50 characters, no invisible
    /// characters).
    #[cfg_attr(feature = "openapi", schema(max_length = 50))]
    pub number: String,
}

/// A death notified by the health facility where it took place, or by a
/// court.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeathNotification {
    /// Always `death`.
    pub kind: DeathKind,
    /// The sender and its reference.
    pub source: Source,
    /// Who died.
    pub deceased: Deceased,
    /// Date of death; not after today (in Cambodia).
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::date_schema))]
    pub date_of_death: Date,
    /// Time of death, 24-hour `HH:MM`, local time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub time_of_death: Option<String>,
    /// Where the death took place.
    pub place_of_death: NotifiedPlace,
    /// The cause of death, when certified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause_of_death: Option<CauseOfDeath>,
    /// The village (8-digit gazetteer code) where the deceased lived: the
    /// notification goes to the tablets of that village's commune.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::village_code_schema))]
    pub residence_village_code: GazetteerCode,
}

/// The identifying details of a deceased person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Deceased {
    /// Family name in Khmer script (at most 100 characters, normalized).
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub family_name: String,
    /// Given name in Khmer script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub given_name: Option<String>,
    /// Family name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub family_name_latin: Option<String>,
    /// Given name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 100))]
    pub given_name_latin: Option<String>,
    /// Sex.
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::sex_schema))]
    pub sex: Sex,
    /// Date of birth, when known: not after the date of death, at most
    /// 120 years before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = openapi::date_schema))]
    pub date_of_birth: Option<Date>,
    /// Nationality, ISO 3166-1 alpha-3 (`KHM`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Z]{3}$", example = "KHM"))]
    pub nationality: Option<String>,
    /// The Khmer Identification Code, when known: ten digits with a valid
    /// check digit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[1-9][0-9]{9}$"))]
    pub kidc: Option<String>,
    /// An identity document, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_document: Option<NotifiedIdDocument>,
}

/// The cause of death: the certifier's words, an ICD-10 code, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CauseOfDeath {
    /// In words (at most 500 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 500))]
    pub text: Option<String>,
    /// The ICD-10 code, such as `I64` or `P36.9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Z][0-9]{2}(\\.[0-9A-Z]{1,4})?$", example = "P36.9")
    )]
    pub icd10: Option<String>,
}
