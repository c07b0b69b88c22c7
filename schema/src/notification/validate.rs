//! [`validate`]: a notification's fields, checked by the registrations'
//! [`Validator`]; only what registrations do not have (source
//! identifiers, times of day, weights, ICD-10 codes with up to four
//! characters after the dot, the kind dispatch) is checked here.

use serde_json::Value;

use super::{
    BirthKind, BirthNotification, BirthType, CauseOfDeath, DeathKind, DeathNotification, Deceased,
    Notification, NotifiedChild, NotifiedIdDocument, NotifiedMother, NotifiedPlace, Source,
};
use crate::birth::{MAX_FACILITY_NAME_CHARS, PlaceKind, Role, Sex};
use crate::date::Date;
use crate::kidc::Kidc;
use crate::validation::{ValidationError, Validator};

/// Longest cause of death in words, in characters.
pub const MAX_CAUSE_CHARS: usize = crate::event::MAX_CAUSE_OF_DEATH_CHARS;
/// Longest source system name and facility code.
pub const MAX_SYSTEM_CHARS: usize = 64;
/// Longest source reference.
pub const MAX_REFERENCE_CHARS: usize = 128;
/// Weight at birth, grams.
pub const WEIGHT_GRAMS: std::ops::RangeInclusive<u64> = 200..=9000;

/// Checks a notification's JSON and returns it typed (names normalized),
/// or every problem found. `today` is the current date in Cambodia.
pub fn validate(json: &Value, today: Date) -> Result<Notification, ValidationError> {
    let mut v = Validator::new(today, None);
    let notification = v.notification(json);
    v.finish(notification, "notification")
}

const BIRTH_FIELDS: &[&str] = &[
    "kind",
    "source",
    "child",
    "place_of_birth",
    "mother",
    "residence_village_code",
];
const DEATH_FIELDS: &[&str] = &[
    "kind",
    "source",
    "deceased",
    "date_of_death",
    "time_of_death",
    "place_of_death",
    "cause_of_death",
    "residence_village_code",
];
const SOURCE_FIELDS: &[&str] = &["system", "facility_code", "facility_name", "reference"];
const CHILD_FIELDS: &[&str] = &[
    "family_name",
    "given_name",
    "family_name_latin",
    "given_name_latin",
    "sex",
    "date_of_birth",
    "time_of_birth",
    "weight_grams",
    "type_of_birth",
];
const PLACE_FIELDS: &[&str] = &["kind", "facility_name", "village_code"];
const MOTHER_FIELDS: &[&str] = &[
    "family_name",
    "given_name",
    "family_name_latin",
    "given_name_latin",
    "date_of_birth",
    "nationality",
    "id_document",
];
const DECEASED_FIELDS: &[&str] = &[
    "family_name",
    "given_name",
    "family_name_latin",
    "given_name_latin",
    "sex",
    "date_of_birth",
    "nationality",
    "kidc",
    "id_document",
];
const CAUSE_FIELDS: &[&str] = &["text", "icd10"];

/// The checks of a notification's own fields. Their names say
/// "notified" where a registration's check of the same field exists.
impl Validator {
    /// A non-empty facility name (a registration's may be empty).
    fn notified_facility_name(&mut self, value: &Value, path: &str) -> Option<String> {
        self.free_text(value, path, MAX_FACILITY_NAME_CHARS)
    }

    /// An identifier: 1 to `max` ASCII letters, digits and `extra`.
    fn identifier(&mut self, value: &Value, path: &str, max: usize, extra: &str) -> Option<String> {
        let s = self.string(value, path)?;
        let ok = !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || extra.as_bytes().contains(&b));
        if !ok {
            let shown: Vec<String> = extra.chars().map(|c| c.to_string()).collect();
            self.report(
                path,
                format!(
                    "must be 1 to {max} of the letters A-Z and a-z, the digits and {}",
                    shown.join(" ")
                ),
            );
            return None;
        }
        Some(s.to_owned())
    }

    fn source_system(&mut self, value: &Value, path: &str) -> Option<String> {
        self.identifier(value, path, MAX_SYSTEM_CHARS, "._-")
    }

    fn source_reference(&mut self, value: &Value, path: &str) -> Option<String> {
        self.identifier(value, path, MAX_REFERENCE_CHARS, "._-/:")
    }

    /// A time of day, 24-hour `HH:MM`.
    fn time_of_day(&mut self, value: &Value, path: &str) -> Option<String> {
        let ok = value.as_str().filter(|s| {
            let b = s.as_bytes();
            b.len() == 5
                && b[2] == b':'
                && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit())
                && (b[0] - b'0') * 10 + (b[1] - b'0') < 24
                && b[3] < b'6'
        });
        if ok.is_none() {
            self.report(path, "must be a time of day HH:MM (24-hour)");
        }
        ok.map(str::to_owned)
    }

    fn weight(&mut self, value: &Value, path: &str) -> Option<u32> {
        match value.as_u64().filter(|g| WEIGHT_GRAMS.contains(g)) {
            Some(g) => u32::try_from(g).ok(),
            None => {
                self.report(
                    path,
                    format!(
                        "must be a whole number of grams from {} to {}",
                        WEIGHT_GRAMS.start(),
                        WEIGHT_GRAMS.end()
                    ),
                );
                None
            }
        }
    }

    /// A KIdC, kept as its text.
    fn notified_kidc(&mut self, value: &Value, path: &str) -> Option<String> {
        match value.as_str().map(Kidc::parse) {
            Some(Ok(k)) => Some(k.as_str().to_owned()),
            _ => {
                self.report(
                    path,
                    "must be a Khmer Identification Code: ten digits with a valid check digit",
                );
                None
            }
        }
    }

    /// An ICD-10 code: up to four characters after the dot (a death
    /// registration's [`crate::event::Icd10`] allows two).
    fn notified_icd10(&mut self, value: &Value, path: &str) -> Option<String> {
        let ok = value.as_str().filter(|s| {
            let b = s.as_bytes();
            let head =
                b.len() >= 3 && b[0].is_ascii_uppercase() && b[1].is_ascii_digit() && b[2].is_ascii_digit();
            let tail = match &b[3.min(b.len())..] {
                [] => true,
                [b'.', rest @ ..] => {
                    (1..=4).contains(&rest.len())
                        && rest.iter().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
                }
                _ => false,
            };
            head && tail
        });
        if ok.is_none() {
            self.report(path, "must be an ICD-10 code such as I64 or P36.9");
        }
        ok.map(str::to_owned)
    }

    fn notification(&mut self, json: &Value) -> Option<Notification> {
        let Value::Object(map) = json else {
            self.report("$", "must be an object");
            return None;
        };
        match map.get("kind").and_then(Value::as_str) {
            Some("birth") => self.notified_birth(json).map(Notification::Birth),
            Some("death") => self.notified_death(json).map(Notification::Death),
            _ => {
                self.report("kind", "must be one of birth, death");
                None
            }
        }
    }

    fn notification_source(&mut self, value: &Value, path: &str) -> Option<Source> {
        let obj = self.object(value, path, SOURCE_FIELDS)?;
        let system = self.required(&obj, "system", Self::source_system);
        let facility_code = self.optional(&obj, "facility_code", Self::source_system);
        let facility_name = self.optional(&obj, "facility_name", Self::notified_facility_name);
        let reference = self.required(&obj, "reference", Self::source_reference);
        Some(Source {
            system: system?,
            facility_code: facility_code?,
            facility_name: facility_name?,
            reference: reference?,
        })
    }

    fn notified_birth(&mut self, json: &Value) -> Option<BirthNotification> {
        let obj = self.object(json, "", BIRTH_FIELDS)?;
        let source = self.required(&obj, "source", Self::notification_source);
        let child = self.required(&obj, "child", Self::notified_child);
        let place_of_birth = self.required(&obj, "place_of_birth", Self::notified_place);
        let child_dob = child.as_ref().map(|c| c.date_of_birth);
        let mother = self.required(&obj, "mother", |v, value, path| {
            v.notified_mother(value, path, child_dob)
        });
        let residence = self.required(&obj, "residence_village_code", Self::village_code);
        Some(BirthNotification {
            kind: BirthKind::Birth,
            source: source?,
            child: child?,
            place_of_birth: place_of_birth?,
            mother: mother?,
            residence_village_code: residence?,
        })
    }

    fn notified_child(&mut self, value: &Value, path: &str) -> Option<NotifiedChild> {
        let obj = self.object(value, path, CHILD_FIELDS)?;
        let family_name = self.optional(&obj, "family_name", Self::name);
        let given_name = self.optional(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let sex = self.required(&obj, "sex", Self::choice::<Sex>);
        let today = self.today;
        let date_of_birth = self
            .required(&obj, "date_of_birth", Self::past_date)
            .and_then(|d| self.at_most_max_age(d, today, &obj.path("date_of_birth"), "before today"));
        let time_of_birth = self.optional(&obj, "time_of_birth", Self::time_of_day);
        let weight_grams = self.optional(&obj, "weight_grams", Self::weight);
        let type_of_birth = self.optional(&obj, "type_of_birth", Self::choice::<BirthType>);
        Some(NotifiedChild {
            family_name: family_name?,
            given_name: given_name?,
            family_name_latin: family_name_latin?,
            given_name_latin: given_name_latin?,
            sex: sex?,
            date_of_birth: date_of_birth?,
            time_of_birth: time_of_birth?,
            weight_grams: weight_grams?,
            type_of_birth: type_of_birth?,
        })
    }

    /// Unlike a registration's place, the facility name is never required.
    fn notified_place(&mut self, value: &Value, path: &str) -> Option<NotifiedPlace> {
        let obj = self.object(value, path, PLACE_FIELDS)?;
        let kind = self.required(&obj, "kind", Self::choice::<PlaceKind>);
        let facility_name = self.optional(&obj, "facility_name", Self::notified_facility_name);
        let village_code = self.required(&obj, "village_code", Self::village_code);
        Some(NotifiedPlace {
            kind: kind?,
            facility_name: facility_name?,
            village_code: village_code?,
        })
    }

    fn notified_mother(
        &mut self,
        value: &Value,
        path: &str,
        child_dob: Option<Date>,
    ) -> Option<NotifiedMother> {
        let obj = self.object(value, path, MOTHER_FIELDS)?;
        let family_name = self.required(&obj, "family_name", Self::name);
        let given_name = self.required(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let mut date_of_birth = self.optional(&obj, "date_of_birth", Self::past_date);
        if let (Some(Some(dob)), Some(child_dob)) = (date_of_birth, child_dob)
            && self
                .age_at_birth(dob, child_dob, Role::Mother, &obj.path("date_of_birth"))
                .is_none()
        {
            date_of_birth = None;
        }
        let nationality = self.optional(&obj, "nationality", Self::nationality);
        let id_document = self.optional(&obj, "id_document", Self::notified_id_document);
        Some(NotifiedMother {
            family_name: family_name?,
            given_name: given_name?,
            family_name_latin: family_name_latin?,
            given_name_latin: given_name_latin?,
            date_of_birth: date_of_birth?,
            nationality: nationality?,
            id_document: id_document?,
        })
    }

    fn notified_id_document(&mut self, value: &Value, path: &str) -> Option<NotifiedIdDocument> {
        let document = self.id_document(value, path)?;
        Some(NotifiedIdDocument {
            kind: document.kind,
            number: document.number,
        })
    }

    fn notified_death(&mut self, json: &Value) -> Option<DeathNotification> {
        let obj = self.object(json, "", DEATH_FIELDS)?;
        let source = self.required(&obj, "source", Self::notification_source);
        let date_of_death = self.required(&obj, "date_of_death", Self::past_date);
        let deceased = self.required(&obj, "deceased", |v, value, path| {
            v.notified_deceased(value, path, date_of_death)
        });
        let time_of_death = self.optional(&obj, "time_of_death", Self::time_of_day);
        let place_of_death = self.required(&obj, "place_of_death", Self::notified_place);
        let cause_of_death = self.optional(&obj, "cause_of_death", Self::notified_cause);
        let residence = self.required(&obj, "residence_village_code", Self::village_code);
        Some(DeathNotification {
            kind: DeathKind::Death,
            source: source?,
            deceased: deceased?,
            date_of_death: date_of_death?,
            time_of_death: time_of_death?,
            place_of_death: place_of_death?,
            cause_of_death: cause_of_death?,
            residence_village_code: residence?,
        })
    }

    fn notified_deceased(
        &mut self,
        value: &Value,
        path: &str,
        date_of_death: Option<Date>,
    ) -> Option<Deceased> {
        let obj = self.object(value, path, DECEASED_FIELDS)?;
        let family_name = self.required(&obj, "family_name", Self::name);
        let given_name = self.optional(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let sex = self.required(&obj, "sex", Self::choice::<Sex>);
        let mut date_of_birth = self.optional(&obj, "date_of_birth", Self::past_date);
        if let (Some(Some(dob)), Some(dod)) = (date_of_birth, date_of_death) {
            let path = obj.path("date_of_birth");
            if dob > dod {
                self.report(&path, "must not be after the date of death");
                date_of_birth = None;
            } else if self
                .at_most_max_age(dob, dod, &path, "before the date of death")
                .is_none()
            {
                date_of_birth = None;
            }
        }
        let nationality = self.optional(&obj, "nationality", Self::nationality);
        let kidc = self.optional(&obj, "kidc", Self::notified_kidc);
        let id_document = self.optional(&obj, "id_document", Self::notified_id_document);
        Some(Deceased {
            family_name: family_name?,
            given_name: given_name?,
            family_name_latin: family_name_latin?,
            given_name_latin: given_name_latin?,
            sex: sex?,
            date_of_birth: date_of_birth?,
            nationality: nationality?,
            kidc: kidc?,
            id_document: id_document?,
        })
    }

    fn notified_cause(&mut self, value: &Value, path: &str) -> Option<CauseOfDeath> {
        let obj = self.object(value, path, CAUSE_FIELDS)?;
        let text = self.optional(&obj, "text", |v, value, path| {
            v.free_text(value, path, MAX_CAUSE_CHARS)
        });
        let icd10 = self.optional(&obj, "icd10", Self::notified_icd10);
        if let (Some(None), Some(None)) = (&text, &icd10) {
            self.report(path, "must give text, icd10 or both (leave it out if unknown)");
            return None;
        }
        Some(CauseOfDeath {
            text: text?,
            icd10: icd10?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> Date {
        Date::parse("2026-12-04").expect("date")
    }

    fn fixture() -> Value {
        serde_json::from_str(include_str!("../../../fixtures/notification-birth.json")).expect("fixture")
    }

    fn death() -> Value {
        serde_json::json!({
            "kind": "death",
            "source": {"system": "COURT-PP", "reference": "PP/2026/77"},
            "deceased": {"family_name": "ម៉ៅ", "given_name": "សុខា", "sex": "female",
                          "date_of_birth": "1941-03-02", "kidc": "1000000001"},
            "date_of_death": "2026-11-25",
            "place_of_death": {"kind": "home", "village_code": "17100302"},
            "cause_of_death": {"icd10": "I64"},
            "residence_village_code": "17100302"
        })
    }

    fn fields(json: &Value) -> Vec<String> {
        validate(json, today())
            .expect_err("refused")
            .problems
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn the_birth_fixture_is_a_valid_birth_notification() {
        let n = validate(&fixture(), today()).expect("valid");
        assert_eq!(n.kind(), "birth");
        assert_eq!(n.source().reference, "HMIS-2026-000123");
        assert_eq!(n.residence_village_code().as_str(), "17100301");
    }

    #[test]
    fn a_death_notification_with_a_kidc_and_a_cause_code_is_valid() {
        let n = validate(&death(), today()).expect("valid");
        assert_eq!(n.kind(), "death");
    }

    #[test]
    fn a_validated_notification_serializes_back_to_what_was_sent() {
        for json in [fixture(), death()] {
            let n = validate(&json, today()).expect("valid");
            assert_eq!(serde_json::to_value(&n).expect("json"), json);
            let back: Notification = serde_json::from_value(json).expect("stored form reads back");
            assert_eq!(back, n);
        }
    }

    #[test]
    fn every_bad_field_is_named_and_no_value_is_repeated() {
        let mut json = fixture();
        json["child"]["date_of_birth"] = "2027-01-01".into();
        json["child"]["time_of_birth"] = "25:00".into();
        json["mother"]["given_name"] = "SECRET\u{202E}NAME".into();
        json["residence_village_code"] = "171003".into();
        json["source"]["reference"] = "has spaces SECRET".into();
        json["mother"]["SECRET-FIELD"] = 1.into();
        let err = validate(&json, today()).expect_err("refused");
        let named: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        for field in [
            "child.date_of_birth",
            "child.time_of_birth",
            "mother.given_name",
            "residence_village_code",
            "source.reference",
            "mother.SECRET-FIELD",
        ] {
            assert!(named.contains(&field), "{field} in {named:?}");
        }
        let text = err.to_string();
        assert!(!text.contains("SECRET\u{202E}") && !text.contains("NAME") && !text.contains("spaces"));
    }

    #[test]
    fn an_unknown_kind_or_a_missing_source_is_named() {
        let mut json = fixture();
        json["kind"] = "marriage".into();
        assert_eq!(fields(&json), ["kind"]);
        let mut json = fixture();
        json.as_object_mut().expect("object").remove("source");
        assert_eq!(fields(&json), ["source"]);
    }

    #[test]
    fn a_deceased_born_after_the_death_or_a_bad_kidc_is_refused() {
        let mut json = death();
        json["deceased"]["date_of_birth"] = "2026-11-26".into();
        json["deceased"]["kidc"] = "1000000002".into();
        assert_eq!(fields(&json), ["deceased.date_of_birth", "deceased.kidc"]);
    }

    #[test]
    fn a_cause_of_death_needs_text_or_a_code_and_codes_have_the_icd10_shape() {
        let mut json = death();
        json["cause_of_death"] = serde_json::json!({});
        assert_eq!(fields(&json), ["cause_of_death"]);
        for bad in ["i64", "I6", "I64.", "I64.12345", "I64 "] {
            json["cause_of_death"] = serde_json::json!({ "icd10": bad });
            assert_eq!(fields(&json), ["cause_of_death.icd10"], "{bad}");
        }
        json["cause_of_death"] = serde_json::json!({ "icd10": "P36.9", "text": "sepsis" });
        validate(&json, today()).expect("valid");
    }

    #[test]
    fn the_mother_must_be_of_plausible_age_at_the_birth() {
        let mut json = fixture();
        json["mother"]["date_of_birth"] = "2020-01-01".into();
        assert_eq!(fields(&json), ["mother.date_of_birth"]);
    }
}
