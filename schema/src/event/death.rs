//! Death registrations.

use serde::{Deserialize, Deserializer, Serialize, de};
use serde_json::Value;

use super::person::{Identified, NAME_FIELDS, PERSON_FIELDS, Person};
use super::{CertifiedBy, DeathInformantRelationship, EventKind, MaritalStatus};
use crate::birth::{IdDocument, Place};
use crate::date::Date;
use crate::gazetteer::GazetteerCode;
use crate::validation::{ValidationError, Validator, date_at};

/// Maximum length of the cause of death's text, in characters.
pub const MAX_CAUSE_OF_DEATH_CHARS: usize = 500;

/// A death registration, as declared at the office. Its JSON (see
/// [`super`]) carries `"event": "death"`, which this type's own serde
/// form leaves to [`super::Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeathRegistration {
    /// Who died: by KIdC, or described.
    pub deceased: Identified<Deceased>,
    /// The date of death: not in the future, not before the deceased's
    /// date of birth.
    pub date_of_death: Date,
    /// Where the death took place.
    pub place_of_death: Place,
    /// The cause of death.
    pub cause_of_death: CauseOfDeath,
    /// Who declares the death.
    pub informant: DeathInformant,
    /// Free-text remarks by the registrar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
}

/// The deceased, described (when not named by KIdC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deceased {
    /// Names, sex, nationality, identity document.
    #[serde(flatten)]
    pub person: Person,
    /// Date of birth, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    /// Marital status at death, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marital_status: Option<MaritalStatus>,
    /// The village (8-digit gazetteer code) where the deceased lived.
    pub residence_village_code: GazetteerCode,
}

/// The cause of death.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CauseOfDeath {
    /// The cause in words, as certified or reported (free text, at most
    /// [`MAX_CAUSE_OF_DEATH_CHARS`] characters).
    pub text: String,
    /// Its ICD-10 code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icd10: Option<Icd10>,
    /// Who established the cause.
    pub certified_by: CertifiedBy,
}

/// The person who declares the death.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeathInformant {
    /// Relationship to the deceased.
    pub relationship: DeathInformantRelationship,
    /// Family name in Khmer script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// Given name in Khmer script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// The informant's identity document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_document: Option<IdDocument>,
}

/// An ICD-10 code in its written form: a capital letter, two digits, and
/// optionally a `.` followed by one or two more digits or capital letters
/// (`I64`, `P36.9`, `U07.1`). Only the form is checked, not that WHO's
/// classification has the code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Icd10(String);

/// What an ICD-10 code must look like.
const ICD10_FORM: &str = "must be an ICD-10 code: a capital letter, two digits, and optionally a \
                          dot and one or two more digits or capital letters (such as I64 or P36.9)";

impl Icd10 {
    /// The code, if `s` has the form of one.
    pub fn parse(s: &str) -> Option<Icd10> {
        let b = s.as_bytes();
        let head = b.len() >= 3 && b[0].is_ascii_uppercase() && b[1..3].iter().all(u8::is_ascii_digit);
        let tail = match &b[3.min(b.len())..] {
            [] => true,
            [b'.', rest @ ..] => {
                (1..=2).contains(&rest.len())
                    && rest.iter().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            }
            _ => false,
        };
        (head && tail).then(|| Icd10(s.to_owned()))
    }

    /// The code as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Icd10 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        // The error does not repeat the input.
        Icd10::parse(&s).ok_or_else(|| de::Error::custom(ICD10_FORM))
    }
}

impl DeathRegistration {
    /// The registration as JSON, with `"event": "death"`, in the layout
    /// [`validate_death`] accepts.
    pub fn to_json_value(&self) -> Value {
        super::tagged_json(EventKind::Death, self)
    }
}

const DEATH_FIELDS: &[&str] = &[
    "event",
    "deceased",
    "date_of_death",
    "place_of_death",
    "cause_of_death",
    "informant",
    "remarks",
];
const DECEASED_FIELDS: &[&str] = &["date_of_birth", "marital_status", "residence_village_code"];
const CAUSE_FIELDS: &[&str] = &["text", "icd10", "certified_by"];
const DEATH_INFORMANT_FIELDS: &[&str] = &["relationship", "family_name", "given_name", "id_document"];

/// Checks a death registration's JSON against the layout and rules (see
/// [`super`]), and returns it typed (names normalized) or every problem
/// found. `today` is the latest date the registration may carry: the
/// date in Cambodia, plus the day of clock difference the caller
/// tolerates (the server's ingest adds it, as for births).
pub fn validate_death(json: &Value, today: Date) -> Result<DeathRegistration, ValidationError> {
    let mut v = Validator::new(today, None);
    let death = v.death(json);
    v.finish(death, "death registration")
}

impl Validator {
    fn death(&mut self, json: &Value) -> Option<DeathRegistration> {
        let obj = self.object(json, "", DEATH_FIELDS)?;
        let date_of_birth = date_at(json, "/deceased/date_of_birth");
        let died_on = date_at(json, "/date_of_death").filter(|d| *d <= self.today);
        let event = self.required(&obj, "event", |v, value, path| v.event_tag(value, path, "death"));
        let deceased = self.required(&obj, "deceased", |v, value, path| {
            v.identified(value, path, |v, value, path| v.deceased(value, path, died_on))
        });
        let date_of_death = self.required(&obj, "date_of_death", |v, value, path| {
            let died = v.past_date(value, path)?;
            match date_of_birth {
                Some(born) => v.not_before(died, born, path, "the deceased's date of birth"),
                None => Some(died),
            }
        });
        let place_of_death = self.required(&obj, "place_of_death", |v, value, path| {
            v.place(value, path, "death")
        });
        let cause_of_death = self.required(&obj, "cause_of_death", Self::cause_of_death);
        let informant = self.required(&obj, "informant", Self::death_informant);
        let remarks = self.optional(&obj, "remarks", Self::remarks);
        event?;
        Some(DeathRegistration {
            deceased: deceased?,
            date_of_death: date_of_death?,
            place_of_death: place_of_death?,
            cause_of_death: cause_of_death?,
            informant: informant?,
            remarks: remarks?,
        })
    }

    fn deceased(&mut self, value: &Value, path: &str, died_on: Option<Date>) -> Option<Deceased> {
        let obj = self.object_of(value, path, &[NAME_FIELDS, PERSON_FIELDS, DECEASED_FIELDS])?;
        let person = self.person_in(&obj);
        let date_of_birth = self.optional(&obj, "date_of_birth", |v, value, path| {
            let born = v.past_date(value, path)?;
            match died_on {
                Some(died) => v.at_most_max_age(born, died, path, "before the date of death"),
                None => v.alive_today(born, path),
            }
        });
        let marital_status = self.optional(&obj, "marital_status", Self::choice::<MaritalStatus>);
        let residence = self.required(&obj, "residence_village_code", Self::village_code);
        Some(Deceased {
            person: person?,
            date_of_birth: date_of_birth?,
            marital_status: marital_status?,
            residence_village_code: residence?,
        })
    }

    fn cause_of_death(&mut self, value: &Value, path: &str) -> Option<CauseOfDeath> {
        let obj = self.object(value, path, CAUSE_FIELDS)?;
        let text = self.required(&obj, "text", |v, value, path| {
            v.free_text(value, path, MAX_CAUSE_OF_DEATH_CHARS)
        });
        let icd10 = self.optional(&obj, "icd10", |v, value, path| {
            let code = value.as_str().and_then(Icd10::parse);
            if code.is_none() {
                v.report(path, ICD10_FORM);
            }
            code
        });
        let certified_by = self.required(&obj, "certified_by", Self::choice::<CertifiedBy>);
        Some(CauseOfDeath {
            text: text?,
            icd10: icd10?,
            certified_by: certified_by?,
        })
    }

    fn death_informant(&mut self, value: &Value, path: &str) -> Option<DeathInformant> {
        let obj = self.object(value, path, DEATH_INFORMANT_FIELDS)?;
        let relationship = self.required(&obj, "relationship", Self::choice::<DeathInformantRelationship>);
        let family_name = self.optional(&obj, "family_name", Self::name);
        let given_name = self.optional(&obj, "given_name", Self::name);
        let id_document = self.optional(&obj, "id_document", Self::id_document);
        Some(DeathInformant {
            relationship: relationship?,
            family_name: family_name?,
            given_name: given_name?,
            id_document: id_document?,
        })
    }
}
