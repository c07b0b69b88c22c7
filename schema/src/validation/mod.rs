//! What every registration's validation shares: the error it returns
//! ([`ValidationError`], one [`FieldProblem`] per bad field), the limits of
//! its text fields, and the walk over the JSON (`Validator`) with the
//! checks of fields that several events have (names, dates, places,
//! identity documents, KIdCs, closed lists).
//!
//! Problem messages never contain the input: field paths and rule
//! descriptions only.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::birth::{IdDocument, IdDocumentKind, Place, PlaceKind};
use crate::date::Date;
use crate::gazetteer::{GazetteerCode, GazetteerError, Level};
use crate::kidc::Kidc;

mod choice;
mod dates;
mod text;

pub(crate) use choice::{Choice, string_enum};

/// Maximum length of a name, in characters after normalization.
pub const MAX_NAME_CHARS: usize = 100;
/// Maximum length of a health facility's (or a court's) name, in
/// characters.
pub const MAX_FACILITY_NAME_CHARS: usize = 200;
/// Maximum length of an identity document number (or a court decision's
/// number), in characters.
pub const MAX_DOCUMENT_NUMBER_CHARS: usize = 50;
/// Maximum length of the remarks, in characters.
pub const MAX_REMARKS_CHARS: usize = 2000;
/// The oldest a registered person can be today, in completed years. The
/// oldest people ever recorded lived to about 117; a date of birth further
/// back is a typing error (or 0001-01-01).
pub const MAX_AGE_YEARS: i32 = 120;

/// One bad field: which one (dotted path such as
/// `child.place_of_birth.village_code`, or `$` for the whole document) and
/// what is expected of it. Never contains the field's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldProblem {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong, e.g. "is required", "must not be in the future".
    pub problem: String,
}

impl FieldProblem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldProblem {
        FieldProblem {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Every problem found in a registration, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", summarize(&self.problems))]
pub struct ValidationError {
    /// The problems; never empty when returned by a validation.
    pub problems: Vec<FieldProblem>,
}

impl ValidationError {
    /// Is there a problem with exactly this field?
    pub fn has_problem_with(&self, field: &str) -> bool {
        self.problems.iter().any(|p| p.field == field)
    }
}

/// "2 problems: a: x; b: y".
fn summarize(problems: &[FieldProblem]) -> String {
    let list: Vec<String> = problems.iter().map(FieldProblem::to_string).collect();
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    format!("{} {noun}: {}", problems.len(), list.join("; "))
}

/// JSON text as a value; malformed JSON is a single problem for the field
/// `"$"` with its line and column.
pub(crate) fn parse_json(json: &str) -> Result<Value, ValidationError> {
    serde_json::from_str(json).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "is not valid JSON: it ends too early",
            _ => "is not valid JSON",
        };
        ValidationError {
            problems: vec![FieldProblem::new(
                "$",
                format!("{what} (line {}, column {})", e.line(), e.column()),
            )],
        }
    })
}

/// `parent.key`, or `key` at the top level.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Can an unknown key be shown in a problem's field path? Only short,
/// plain identifiers: anything else might be personal data.
pub(crate) fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A JSON object being checked, with its path.
pub(crate) struct Obj<'v> {
    pub(crate) map: &'v Map<String, Value>,
    pub(crate) path: String,
}

impl<'v> Obj<'v> {
    /// The field's value; `null` counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

/// Collects problems while walking the JSON. Each check returns `None`
/// exactly when it has reported a problem.
pub(crate) struct Validator {
    /// The latest date a registration may carry.
    pub(crate) today: Date,
    /// The commune of the registering office, when known.
    pub(crate) office: Option<GazetteerCode>,
    pub(crate) problems: Vec<FieldProblem>,
}

const ID_DOCUMENT_FIELDS: &[&str] = &["kind", "number"];

impl Validator {
    /// A validator for a registration entered on `today`.
    pub(crate) fn new(today: Date, office: Option<GazetteerCode>) -> Validator {
        Validator {
            today,
            office,
            problems: Vec::new(),
        }
    }

    /// The walk's result: `value` when no problem was reported, every
    /// problem otherwise.
    pub(crate) fn finish<T>(mut self, value: Option<T>, what: &str) -> Result<T, ValidationError> {
        match value {
            Some(value) if self.problems.is_empty() => Ok(value),
            _ => {
                if self.problems.is_empty() {
                    // Unreachable: every `None` comes with a problem.
                    self.report("$", format!("is not a valid {what}"));
                }
                Err(ValidationError {
                    problems: self.problems,
                })
            }
        }
    }

    pub(crate) fn report(&mut self, field: &str, problem: impl Into<String>) {
        let field = if field.is_empty() { "$" } else { field };
        self.problems.push(FieldProblem::new(field, problem));
    }

    /// `value` must be an object; reports its unknown fields.
    pub(crate) fn object<'v>(&mut self, value: &'v Value, path: &str, allowed: &[&str]) -> Option<Obj<'v>> {
        self.object_of(value, path, &[allowed])
    }

    /// [`Validator::object`] whose allowed fields are those of several
    /// lists (a person's and a role's).
    pub(crate) fn object_of<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&[&str]],
    ) -> Option<Obj<'v>> {
        let Value::Object(map) = value else {
            self.report(path, "must be an object");
            return None;
        };
        for key in map.keys() {
            if !allowed.iter().any(|list| list.contains(&key.as_str())) {
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
    pub(crate) fn required<T>(
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
    pub(crate) fn optional<T>(
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

    /// A list of `min..=max` elements, each checked by `check` at
    /// `path[i]`. `None` when the list or any element is bad.
    pub(crate) fn list<T>(
        &mut self,
        value: &Value,
        path: &str,
        (min, max): (usize, usize),
        mut check: impl FnMut(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Value::Array(items) = value else {
            self.report(path, "must be a list");
            return None;
        };
        if items.len() < min || items.len() > max {
            let count = if min == max {
                format!("exactly {min}")
            } else {
                format!("{min} to {max}")
            };
            self.report(path, format!("must hold {count} entries"));
            return None;
        }
        let checked: Vec<Option<T>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| check(self, item, &format!("{path}[{i}]")))
            .collect();
        checked.into_iter().collect()
    }

    pub(crate) fn string<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v str> {
        let s = value.as_str();
        if s.is_none() {
            self.report(path, "must be a string");
        }
        s
    }

    pub(crate) fn choice<T: Choice>(&mut self, value: &Value, path: &str) -> Option<T> {
        let parsed = value.as_str().and_then(T::parse);
        if parsed.is_none() {
            self.report(path, T::expectation());
        }
        parsed
    }

    /// The constant `"event"` field: exactly `tag`.
    pub(crate) fn event_tag(&mut self, value: &Value, path: &str, tag: &str) -> Option<()> {
        if value.as_str() == Some(tag) {
            Some(())
        } else {
            self.report(path, format!("must be \"{tag}\""));
            None
        }
    }

    pub(crate) fn village_code(&mut self, value: &Value, path: &str) -> Option<GazetteerCode> {
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

    /// A KIdC with a valid check digit.
    pub(crate) fn kidc(&mut self, value: &Value, path: &str) -> Option<Kidc> {
        let s = self.string(value, path)?;
        match Kidc::parse(s) {
            Ok(kidc) => Some(kidc),
            Err(e) => {
                self.report(path, format!("must be a KIdC: it {e}"));
                None
            }
        }
    }

    pub(crate) fn nationality(&mut self, value: &Value, path: &str) -> Option<String> {
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

    pub(crate) fn boolean(&mut self, value: &Value, path: &str) -> Option<bool> {
        let b = value.as_bool();
        if b.is_none() {
            self.report(path, "must be true or false");
        }
        b
    }

    pub(crate) fn id_document(&mut self, value: &Value, path: &str) -> Option<IdDocument> {
        let obj = self.object(value, path, ID_DOCUMENT_FIELDS)?;
        let kind = self.required(&obj, "kind", Self::choice::<IdDocumentKind>);
        let number = self.required(&obj, "number", Self::document_number);
        Some(IdDocument {
            kind: kind?,
            number: number?,
        })
    }
}

const PLACE_FIELDS: &[&str] = &["kind", "facility_name", "village_code"];

impl Validator {
    /// Where a `event` ("birth", "death") took place: a kind, the
    /// facility's name when the kind is a health facility, the village.
    pub(crate) fn place(&mut self, value: &Value, path: &str, event: &str) -> Option<Place> {
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
                format!("is required for a {event} in a health facility"),
            );
            return None;
        }
        Some(Place {
            kind: kind?,
            facility_name: facility_name?,
            village_code: village_code?,
        })
    }
}

/// The date at `pointer` in `json`, when there is one that exists: read
/// ahead of the walk, for the checks of other fields against it (the walk
/// reports its own problems).
pub(crate) fn date_at(json: &Value, pointer: &str) -> Option<Date> {
    json.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|s| Date::parse(s).ok())
}
