//! Amendments of a birth registration: which fields change, to what, and
//! why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AmendmentReason, BirthField, EventKind};
use crate::birth::{IdDocumentKind, PlaceKind, Relationship, Sex};
use crate::date::Date;
use crate::validation::{Choice, ValidationError, Validator, join};

/// An amendment: new values for fields of a birth registration, and the
/// reason. Its JSON carries `"event": "amendment"`, which this type's own
/// serde form leaves to [`super::Event`].
///
/// Each new value passed the rule of the field it replaces (a Latin name
/// field the Latin rule, a date the date rule) and is stored normalized;
/// `null` removes an optional field. What is not checked here, because it
/// needs the amended record: which record is amended (the amendment's
/// link to it is later work), and the rules that compare fields (a
/// parent's age at the birth, the residence against the office): the
/// record as amended must pass [`crate::birth::validate`] again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amendment {
    /// The fields that change (at least one), by dotted path, and their
    /// new values (`null`: the optional field is removed).
    pub changes: BTreeMap<BirthField, Value>,
    /// Why.
    pub reason: AmendmentReason,
    /// Free-text remarks by the registrar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remarks: Option<String>,
    /// The id of the record amended (a UUID in its hyphenated lower-case
    /// form). A file a registrar hands in has none: the tablet adds it
    /// (`crvs amend ID FILE`), and the server holds an amendment record
    /// without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amends: Option<String>,
}

impl Amendment {
    /// The amendment as JSON, with `"event": "amendment"`, in the layout
    /// [`validate_amendment`] accepts.
    pub fn to_json_value(&self) -> Value {
        super::tagged_json(EventKind::Amendment, self)
    }

    /// The birth registration `data` (its JSON) with this amendment's
    /// changes made: each dotted path set to its new value, `null`
    /// removing the field; a missing parent object (a father added) is
    /// created. The result must pass [`crate::birth::validate`] again
    /// before it stands.
    pub fn apply_to(&self, data: &Value) -> Value {
        let mut out = data.clone();
        for (field, new) in &self.changes {
            crate::record::set_json_path(&mut out, field.as_str(), new);
        }
        out
    }

    /// The value at each changed path in `data` before the change (`null`
    /// where there was none), in the order of [`Amendment::changes`].
    pub fn old_values(&self, data: &Value) -> Vec<(BirthField, Value)> {
        self.changes
            .keys()
            .map(|f| {
                let old = f
                    .as_str()
                    .split('.')
                    .try_fold(data, |v, k| v.get(k))
                    .cloned()
                    .unwrap_or(Value::Null);
                (*f, old)
            })
            .collect()
    }
}

/// Is `s` a UUID in its hyphenated lower-case form?
pub fn is_record_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

impl BirthField {
    /// Must a birth registration have this field (so that an amendment
    /// may change it but not remove it)? The fields of an identity
    /// document are required within the document, and a father's names
    /// and nationality within the father.
    pub fn is_required(self) -> bool {
        use BirthField::*;
        matches!(
            self,
            ChildFamilyName
                | ChildSex
                | ChildDateOfBirth
                | ChildPlaceOfBirthKind
                | ChildPlaceOfBirthVillageCode
                | MotherFamilyName
                | MotherGivenName
                | MotherNationality
                | MotherIdDocumentKind
                | MotherIdDocumentNumber
                | FatherFamilyName
                | FatherGivenName
                | FatherNationality
                | FatherIdDocumentKind
                | FatherIdDocumentNumber
                | InformantRelationship
                | ResidenceVillageCode
        )
    }
}

impl AmendmentReason {
    /// May an amendment for this reason change `field`? A given name
    /// added changes the child's given names only; a paternity
    /// acknowledged, the father and the child's family names. The other
    /// reasons may change any field.
    pub fn allows(self, field: BirthField) -> bool {
        use BirthField::*;
        match self {
            AmendmentReason::GivenNameAdded => matches!(field, ChildGivenName | ChildGivenNameLatin),
            AmendmentReason::PaternityAcknowledged => {
                field.as_str().starts_with("father.")
                    || matches!(field, ChildFamilyName | ChildFamilyNameLatin)
            }
            AmendmentReason::ClericalError | AmendmentReason::CourtOrder | AmendmentReason::NameChange => {
                true
            }
        }
    }
}

const AMENDMENT_FIELDS: &[&str] = &["event", "changes", "reason", "remarks", "amends"];

/// Checks an amendment's JSON against the layout and rules (see
/// [`super`]), and returns it typed (new values normalized) or every
/// problem found. `today` as for [`super::validate_death`].
pub fn validate_amendment(json: &Value, today: Date) -> Result<Amendment, ValidationError> {
    let mut v = Validator::new(today, None);
    let amendment = v.amendment(json);
    v.finish(amendment, "amendment")
}

/// Can a key of `changes` be shown in a problem's field path? A short
/// dotted path of plain identifiers; anything else might be personal data.
fn is_plain_path(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// Why `key`, which is not a [`BirthField`], cannot be amended.
fn not_amendable(key: &str) -> &'static str {
    let server = ["kidc", "server", "registration_number", "hold"];
    if server.contains(&key) || key.starts_with("server.") {
        "is written by the server only: an amendment cannot change it"
    } else if BirthField::ALL.iter().any(|f| {
        f.as_str()
            .strip_prefix(key)
            .is_some_and(|rest| rest.starts_with('.'))
    }) {
        "must name a single field (such as child.given_name), not a whole part of the registration"
    } else {
        "is not a field of a birth registration that an amendment may change"
    }
}

impl Validator {
    fn amendment(&mut self, json: &Value) -> Option<Amendment> {
        let obj = self.object(json, "", AMENDMENT_FIELDS)?;
        let event = self.required(&obj, "event", |v, value, path| {
            v.event_tag(value, path, "amendment")
        });
        let mut changes = self.required(&obj, "changes", Self::changes);
        let reason = self.required(&obj, "reason", Self::choice::<AmendmentReason>);
        let remarks = self.optional(&obj, "remarks", Self::remarks);
        let amends = self.optional(&obj, "amends", |v, value, path| match value.as_str() {
            Some(s) if is_record_id(s) => Some(s.to_owned()),
            _ => {
                v.report(path, "must be a record id (a UUID, hyphenated, lower case)");
                None
            }
        });
        if let (Some(fields), Some(reason)) = (&changes, reason) {
            let refused: Vec<BirthField> = fields.keys().copied().filter(|f| !reason.allows(*f)).collect();
            for field in &refused {
                self.report(
                    &join("changes", field.as_str()),
                    format!("cannot be changed by an amendment for the reason {reason}"),
                );
            }
            if !refused.is_empty() {
                changes = None;
            }
        }
        event?;
        Some(Amendment {
            changes: changes?,
            reason: reason?,
            remarks: remarks?,
            amends: amends?,
        })
    }

    fn changes(&mut self, value: &Value, path: &str) -> Option<BTreeMap<BirthField, Value>> {
        let Value::Object(map) = value else {
            self.report(
                path,
                "must be an object of field paths (such as child.given_name) and their new values",
            );
            return None;
        };
        if map.is_empty() {
            self.report(path, "must change at least one field");
            return None;
        }
        let mut changes = BTreeMap::new();
        let mut clean = true;
        for (key, new) in map {
            let shown = if is_plain_path(key) {
                join(path, key)
            } else {
                join(path, "*")
            };
            let checked = match BirthField::parse(key) {
                Some(field) => self.change(field, new, &shown).map(|new| (field, new)),
                None => {
                    self.report(&shown, not_amendable(key));
                    None
                }
            };
            match checked {
                Some((field, new)) => {
                    changes.insert(field, new);
                }
                None => clean = false,
            }
        }
        clean.then_some(changes)
    }

    /// The new value of `field`, checked by the field's own rule and
    /// normalized; `null` for an optional field.
    fn change(&mut self, field: BirthField, new: &Value, path: &str) -> Option<Value> {
        use BirthField::*;
        if new.is_null() {
            if field.is_required() {
                self.report(path, "must not be null: a birth registration requires the field");
                return None;
            }
            return Some(Value::Null);
        }
        match field {
            ChildFamilyName | ChildGivenName | MotherFamilyName | MotherGivenName | FatherFamilyName
            | FatherGivenName | InformantFamilyName | InformantGivenName => {
                self.name(new, path).map(Value::from)
            }
            ChildFamilyNameLatin
            | ChildGivenNameLatin
            | MotherFamilyNameLatin
            | MotherGivenNameLatin
            | FatherFamilyNameLatin
            | FatherGivenNameLatin => self.latin_name(new, path).map(Value::from),
            ChildSex => self.choice_value::<Sex>(new, path),
            ChildDateOfBirth | MotherDateOfBirth | FatherDateOfBirth => {
                let date = self.past_date(new, path)?;
                self.alive_today(date, path).map(|d| Value::from(d.to_string()))
            }
            ChildPlaceOfBirthKind => self.choice_value::<PlaceKind>(new, path),
            ChildPlaceOfBirthFacilityName => self.facility_name(new, path).map(Value::from),
            ChildPlaceOfBirthVillageCode | ResidenceVillageCode => {
                self.village_code(new, path).map(|c| Value::from(c.as_str()))
            }
            MotherNationality | FatherNationality => self.nationality(new, path).map(Value::from),
            MotherIdDocumentKind | FatherIdDocumentKind => self.choice_value::<IdDocumentKind>(new, path),
            MotherIdDocumentNumber | FatherIdDocumentNumber => {
                self.document_number(new, path).map(Value::from)
            }
            InformantRelationship => self.choice_value::<Relationship>(new, path),
            RegisteredAwayFromResidence => self.boolean(new, path).map(Value::from),
            Remarks => self.remarks(new, path).map(Value::from),
        }
    }

    fn choice_value<T: Choice>(&mut self, value: &Value, path: &str) -> Option<Value> {
        self.choice::<T>(value, path).map(|c| Value::from(c.as_str()))
    }
}
