//! [`validate`]: the walk over a notification's JSON that reports every bad
//! field at once, by its dotted path, and never repeats a value.
//!
//! The text rules are those of birth registrations
//! (`crvs_schema::birth`): names normalized ([`normalize_name`],
//! [`normalize_latin_name`]) and at most [`MAX_NAME_CHARS`] characters; no
//! control characters, no bidirectional controls and no invisible
//! characters except the zero-width space and the joiners in Khmer and
//! Latin text (none in document numbers and identifiers); dates that exist
//! and are not after today in Cambodia; nobody older than
//! [`MAX_AGE_YEARS`]; the mother [`MOTHER_AGE_AT_BIRTH`] at the child's
//! birth; 8-digit village codes of the gazetteer. The schema crate's own
//! walker is private to it, so its primitives are repeated here, with the
//! same messages.

use crvs_schema::birth::{
    FieldProblem, IdDocumentKind, MAX_AGE_YEARS, MAX_DOCUMENT_NUMBER_CHARS, MAX_FACILITY_NAME_CHARS,
    MAX_NAME_CHARS, MOTHER_AGE_AT_BIRTH, PlaceKind, Sex, ValidationError, normalize_latin_name,
    normalize_name,
};
use crvs_schema::gazetteer::{GazetteerError, Level};
use crvs_schema::{Date, GazetteerCode, Kidc, text};
use serde_json::{Map, Value};

use super::body::{
    BirthKind, BirthNotification, BirthType, CauseOfDeath, DeathKind, DeathNotification, Deceased,
    Notification, NotifiedChild, NotifiedIdDocument, NotifiedMother, NotifiedPlace, Source,
};

/// Longest cause of death in words, in characters.
pub const MAX_CAUSE_CHARS: usize = 500;
/// Longest source system name and facility code.
pub const MAX_SYSTEM_CHARS: usize = 64;
/// Longest source reference.
pub const MAX_REFERENCE_CHARS: usize = 128;
/// Weight at birth, grams.
pub const WEIGHT_GRAMS: std::ops::RangeInclusive<u64> = 200..=9000;

/// Checks a notification's JSON and returns it typed (names normalized),
/// or every problem found. `today` is the current date in Cambodia.
pub fn validate(json: &Value, today: Date) -> Result<Notification, ValidationError> {
    let mut w = Walk {
        today,
        problems: Vec::new(),
    };
    match w.notification(json) {
        Some(n) if w.problems.is_empty() => Ok(n),
        _ => {
            if w.problems.is_empty() {
                w.report("$", "is not a valid notification");
            }
            Err(ValidationError { problems: w.problems })
        }
    }
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
const ID_DOCUMENT_FIELDS: &[&str] = &["kind", "number"];
const CAUSE_FIELDS: &[&str] = &["text", "icd10"];

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

/// Which invisible characters a text field may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Khmer or free text: the zero-width space and the joiners.
    Khmer,
    /// Latin transliteration: the same, removed by normalization.
    Latin,
}

/// A closed set of strings from `crvs-schema` (or this crate).
trait Closed: Copy {
    fn values() -> Vec<&'static str>;
    fn from_str(s: &str) -> Option<Self>;
}

macro_rules! closed {
    ($($t:ty),*) => {$(
        impl Closed for $t {
            fn values() -> Vec<&'static str> {
                <$t>::ALL.iter().map(|v| v.as_str()).collect()
            }
            fn from_str(s: &str) -> Option<Self> {
                <$t>::parse(s)
            }
        }
    )*};
}
closed!(Sex, PlaceKind, IdDocumentKind, BirthType);

/// Collects problems while walking the JSON. Each check returns `None`
/// exactly when it has reported a problem.
struct Walk {
    today: Date,
    problems: Vec<FieldProblem>,
}

impl Walk {
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

    fn choice<T: Closed>(&mut self, value: &Value, path: &str) -> Option<T> {
        let parsed = value.as_str().and_then(T::from_str);
        if parsed.is_none() {
            self.report(path, format!("must be one of {}", T::values().join(", ")));
        }
        parsed
    }

    /// No control characters (but whitespace when `space_ok`), no
    /// bidirectional controls, no invisible characters but those `script`
    /// allows (`None`: none at all).
    fn plain_text(&mut self, raw: &str, path: &str, script: Option<Script>, space_ok: bool) -> Option<()> {
        if raw
            .chars()
            .any(|c| c.is_control() && !(space_ok && c.is_whitespace()))
        {
            self.report(path, "must not contain control characters");
            return None;
        }
        if raw.chars().any(text::is_bidi_control) {
            self.report(
                path,
                "must not contain bidirectional control characters (such as a right-to-left override)",
            );
            return None;
        }
        let allowed =
            |c: char| script.is_some() && (text::is_khmer_zero_width(c) || c == text::BYTE_ORDER_MARK);
        if raw.chars().any(|c| text::is_invisible(c) && !allowed(c)) {
            self.report(
                path,
                if script.is_none() {
                    "must not contain invisible characters"
                } else {
                    "must not contain invisible characters (only the zero-width space and the \
                     joiners U+200C and U+200D are allowed)"
                },
            );
            return None;
        }
        Some(())
    }

    /// A normalized, non-empty text of at most `max` characters.
    fn text_in(&mut self, value: &Value, path: &str, max: usize, script: Script) -> Option<String> {
        let raw = self.string(value, path)?;
        self.plain_text(raw, path, Some(script), true)?;
        let text = match script {
            Script::Latin => normalize_latin_name(raw),
            Script::Khmer => normalize_name(raw),
        };
        if text.is_empty() {
            self.report(path, "must not be empty");
            return None;
        }
        if text.chars().count() > max {
            self.report(path, format!("must be at most {max} characters long"));
            return None;
        }
        Some(text)
    }

    fn name(&mut self, value: &Value, path: &str) -> Option<String> {
        self.text_in(value, path, MAX_NAME_CHARS, Script::Khmer)
    }

    fn latin_name(&mut self, value: &Value, path: &str) -> Option<String> {
        self.text_in(value, path, MAX_NAME_CHARS, Script::Latin)
    }

    fn facility_name(&mut self, value: &Value, path: &str) -> Option<String> {
        self.text_in(value, path, MAX_FACILITY_NAME_CHARS, Script::Khmer)
    }

    fn cause_text(&mut self, value: &Value, path: &str) -> Option<String> {
        self.text_in(value, path, MAX_CAUSE_CHARS, Script::Khmer)
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

    fn system(&mut self, value: &Value, path: &str) -> Option<String> {
        self.identifier(value, path, MAX_SYSTEM_CHARS, "._-")
    }

    fn reference(&mut self, value: &Value, path: &str) -> Option<String> {
        self.identifier(value, path, MAX_REFERENCE_CHARS, "._-/:")
    }

    fn document_number(&mut self, value: &Value, path: &str) -> Option<String> {
        let number = self.string(value, path)?.trim();
        if number.is_empty() {
            self.report(path, "must not be empty");
            None
        } else if number.chars().count() > MAX_DOCUMENT_NUMBER_CHARS {
            self.report(
                path,
                format!("must be at most {MAX_DOCUMENT_NUMBER_CHARS} characters long"),
            );
            None
        } else {
            self.plain_text(number, path, None, false)?;
            Some(number.to_owned())
        }
    }

    /// A date that exists and is not after today.
    fn past_date(&mut self, value: &Value, path: &str) -> Option<Date> {
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

    /// `dob` unless someone born then would be more than [`MAX_AGE_YEARS`]
    /// old on `on`.
    fn not_too_old(&mut self, dob: Date, on: Date, path: &str, when: &str) -> Option<Date> {
        if dob.age_on(on) > MAX_AGE_YEARS {
            self.report(
                path,
                format!("must not be more than {MAX_AGE_YEARS} years before {when}"),
            );
            return None;
        }
        Some(dob)
    }

    /// A time of day, 24-hour `HH:MM`.
    fn time(&mut self, value: &Value, path: &str) -> Option<String> {
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

    fn kidc(&mut self, value: &Value, path: &str) -> Option<String> {
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

    fn icd10(&mut self, value: &Value, path: &str) -> Option<String> {
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
            Some("birth") => self.birth(json).map(Notification::Birth),
            Some("death") => self.death(json).map(Notification::Death),
            _ => {
                self.report("kind", "must be one of birth, death");
                None
            }
        }
    }

    fn source(&mut self, value: &Value, path: &str) -> Option<Source> {
        let obj = self.object(value, path, SOURCE_FIELDS)?;
        let system = self.required(&obj, "system", Self::system);
        let facility_code = self.optional(&obj, "facility_code", Self::system);
        let facility_name = self.optional(&obj, "facility_name", Self::facility_name);
        let reference = self.required(&obj, "reference", Self::reference);
        Some(Source {
            system: system?,
            facility_code: facility_code?,
            facility_name: facility_name?,
            reference: reference?,
        })
    }

    fn birth(&mut self, json: &Value) -> Option<BirthNotification> {
        let obj = self.object(json, "", BIRTH_FIELDS)?;
        let source = self.required(&obj, "source", Self::source);
        let child = self.required(&obj, "child", Self::child);
        let place_of_birth = self.required(&obj, "place_of_birth", Self::place);
        let child_dob = child.as_ref().map(|c| c.date_of_birth);
        let mother = self.required(&obj, "mother", |w, v, p| w.mother(v, p, child_dob));
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

    fn child(&mut self, value: &Value, path: &str) -> Option<NotifiedChild> {
        let obj = self.object(value, path, CHILD_FIELDS)?;
        let family_name = self.optional(&obj, "family_name", Self::name);
        let given_name = self.optional(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let sex = self.required(&obj, "sex", Self::choice::<Sex>);
        let today = self.today;
        let date_of_birth = self
            .required(&obj, "date_of_birth", Self::past_date)
            .and_then(|d| self.not_too_old(d, today, &obj.path("date_of_birth"), "today"));
        let time_of_birth = self.optional(&obj, "time_of_birth", Self::time);
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

    fn place(&mut self, value: &Value, path: &str) -> Option<NotifiedPlace> {
        let obj = self.object(value, path, PLACE_FIELDS)?;
        let kind = self.required(&obj, "kind", Self::choice::<PlaceKind>);
        let facility_name = self.optional(&obj, "facility_name", Self::facility_name);
        let village_code = self.required(&obj, "village_code", Self::village_code);
        Some(NotifiedPlace {
            kind: kind?,
            facility_name: facility_name?,
            village_code: village_code?,
        })
    }

    fn mother(&mut self, value: &Value, path: &str, child_dob: Option<Date>) -> Option<NotifiedMother> {
        let obj = self.object(value, path, MOTHER_FIELDS)?;
        let family_name = self.required(&obj, "family_name", Self::name);
        let given_name = self.required(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let mut date_of_birth = self.optional(&obj, "date_of_birth", Self::past_date);
        if let (Some(Some(dob)), Some(child_dob)) = (date_of_birth, child_dob) {
            let ages = MOTHER_AGE_AT_BIRTH;
            let problem = if dob > child_dob {
                Some("must not be after the child's date of birth".to_owned())
            } else if !ages.contains(&dob.age_on(child_dob)) {
                Some(format!(
                    "must make the mother {} to {} years old at the child's birth (leave it out if unknown)",
                    ages.start(),
                    ages.end()
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.report(&obj.path("date_of_birth"), problem);
                date_of_birth = None;
            }
        }
        let nationality = self.optional(&obj, "nationality", Self::nationality);
        let id_document = self.optional(&obj, "id_document", Self::id_document);
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

    fn id_document(&mut self, value: &Value, path: &str) -> Option<NotifiedIdDocument> {
        let obj = self.object(value, path, ID_DOCUMENT_FIELDS)?;
        let kind = self.required(&obj, "kind", Self::choice::<IdDocumentKind>);
        let number = self.required(&obj, "number", Self::document_number);
        Some(NotifiedIdDocument {
            kind: kind?,
            number: number?,
        })
    }

    fn death(&mut self, json: &Value) -> Option<DeathNotification> {
        let obj = self.object(json, "", DEATH_FIELDS)?;
        let source = self.required(&obj, "source", Self::source);
        let date_of_death = self.required(&obj, "date_of_death", Self::past_date);
        let deceased = self.required(&obj, "deceased", |w, v, p| w.deceased(v, p, date_of_death));
        let time_of_death = self.optional(&obj, "time_of_death", Self::time);
        let place_of_death = self.required(&obj, "place_of_death", Self::place);
        let cause_of_death = self.optional(&obj, "cause_of_death", Self::cause);
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

    fn deceased(&mut self, value: &Value, path: &str, date_of_death: Option<Date>) -> Option<Deceased> {
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
            } else if self.not_too_old(dob, dod, &path, "the date of death").is_none() {
                date_of_birth = None;
            }
        }
        let nationality = self.optional(&obj, "nationality", Self::nationality);
        let kidc = self.optional(&obj, "kidc", Self::kidc);
        let id_document = self.optional(&obj, "id_document", Self::id_document);
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

    fn cause(&mut self, value: &Value, path: &str) -> Option<CauseOfDeath> {
        let obj = self.object(value, path, CAUSE_FIELDS)?;
        let text = self.optional(&obj, "text", Self::cause_text);
        let icd10 = self.optional(&obj, "icd10", Self::icd10);
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
