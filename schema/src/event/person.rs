//! The people of an event: named in full ([`Person`], [`PersonName`]),
//! by their KIdC ([`ByKidc`]), or by either ([`Identified`]) with details
//! enough to find them ([`IdentifyingDetails`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::birth::{IdDocument, Sex};
use crate::date::Date;
use crate::kidc::Kidc;
use crate::validation::{Obj, Validator, is_plain_key, join};

/// A person's names: in Khmer script, and optionally in Latin
/// transliteration. A marriage's witness is one.
///
/// Flattened into [`Person`], so its serde form does not refuse unknown
/// fields; the validators do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonName {
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
}

/// A person described in full: the deceased, a spouse, an adoptive
/// parent. Each role adds its own fields (date of birth, marital status,
/// residence) beside these, in the same JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The names.
    #[serde(flatten)]
    pub name: PersonName,
    /// Sex.
    pub sex: Sex,
    /// Nationality as an ISO 3166-1 alpha-3 code such as `"KHM"`.
    pub nationality: String,
    /// The identity document shown, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_document: Option<IdDocument>,
}

/// A person known to the registry, named by their KIdC alone:
/// `{ "kidc": "1000000001" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByKidc {
    /// The person's KIdC (a valid check digit; whether the registry knows
    /// it is checked where the registry is).
    pub kidc: Kidc,
}

/// A person named by their KIdC, or described by details `T` when they
/// have none (or it is not at hand). JSON: the object holds either
/// `kidc` alone or the details' fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Identified<T> {
    /// `{ "kidc": ... }`.
    ByKidc(ByKidc),
    /// The details.
    Described(T),
}

/// Details enough to find a person in the registry without their KIdC
/// (a divorcing spouse): a family name and a given name, each in Khmer or
/// Latin script, and a date of birth or an identity document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifyingDetails {
    /// Family name in Khmer script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// Given name in Khmer script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// Family name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name_latin: Option<String>,
    /// Given name in Latin transliteration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name_latin: Option<String>,
    /// Date of birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    /// An identity document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_document: Option<IdDocument>,
}

/// The fields of [`PersonName`].
pub(crate) const NAME_FIELDS: &[&str] = &[
    "family_name",
    "given_name",
    "family_name_latin",
    "given_name_latin",
];
/// The fields of [`Person`] other than the names.
pub(crate) const PERSON_FIELDS: &[&str] = &["sex", "nationality", "id_document"];
const IDENTIFYING_FIELDS: &[&str] = &["date_of_birth", "id_document"];

impl Validator {
    /// The names of `obj`, whose unknown fields the caller reported.
    pub(crate) fn person_name_in(&mut self, obj: &Obj<'_>) -> Option<PersonName> {
        let family_name = self.required(obj, "family_name", Self::name);
        let given_name = self.required(obj, "given_name", Self::name);
        let family_name_latin = self.optional(obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(obj, "given_name_latin", Self::latin_name);
        Some(PersonName {
            family_name: family_name?,
            given_name: given_name?,
            family_name_latin: family_name_latin?,
            given_name_latin: given_name_latin?,
        })
    }

    /// A person named and nothing else (a witness).
    pub(crate) fn person_name(&mut self, value: &Value, path: &str) -> Option<PersonName> {
        let obj = self.object(value, path, NAME_FIELDS)?;
        self.person_name_in(&obj)
    }

    /// The [`Person`] fields of `obj`, whose unknown fields the caller
    /// reported.
    pub(crate) fn person_in(&mut self, obj: &Obj<'_>) -> Option<Person> {
        let name = self.person_name_in(obj);
        let sex = self.required(obj, "sex", Self::choice::<Sex>);
        let nationality = self.required(obj, "nationality", Self::nationality);
        let id_document = self.optional(obj, "id_document", Self::id_document);
        Some(Person {
            name: name?,
            sex: sex?,
            nationality: nationality?,
            id_document: id_document?,
        })
    }

    /// `{ "kidc": ... }` and nothing else.
    pub(crate) fn by_kidc(&mut self, value: &Value, path: &str) -> Option<ByKidc> {
        let obj = self.object(value, path, &["kidc"])?;
        let kidc = self.required(&obj, "kidc", Self::kidc)?;
        Some(ByKidc { kidc })
    }

    /// A person by KIdC when the object has a `kidc` (then nothing else),
    /// otherwise by the details `details` checks.
    pub(crate) fn identified<T>(
        &mut self,
        value: &Value,
        path: &str,
        details: impl FnOnce(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<Identified<T>> {
        let Some(map) = value
            .as_object()
            .filter(|m| m.get("kidc").is_some_and(|k| !k.is_null()))
        else {
            return details(self, value, path).map(Identified::Described);
        };
        let mut clean = true;
        for key in map.keys().filter(|k| *k != "kidc") {
            clean = false;
            if is_plain_key(key) {
                self.report(&join(path, key), "must be left out when kidc is given");
            } else {
                self.report(&join(path, "*"), "unknown field with an unusual name");
            }
        }
        let kidc = self.kidc(&map["kidc"], &join(path, "kidc"));
        clean.then_some(())?;
        Some(Identified::ByKidc(ByKidc { kidc: kidc? }))
    }

    /// [`IdentifyingDetails`]; `latest_birth` is the latest plausible date
    /// of birth, when known, and `what` names it.
    pub(crate) fn identifying_details(
        &mut self,
        value: &Value,
        path: &str,
        latest_birth: Option<(Date, &str)>,
    ) -> Option<IdentifyingDetails> {
        let obj = self.object_of(value, path, &[NAME_FIELDS, IDENTIFYING_FIELDS, &["kidc"]])?;
        let family_name = self.optional(&obj, "family_name", Self::name);
        let given_name = self.optional(&obj, "given_name", Self::name);
        let family_name_latin = self.optional(&obj, "family_name_latin", Self::latin_name);
        let given_name_latin = self.optional(&obj, "given_name_latin", Self::latin_name);
        let date_of_birth = self.optional(&obj, "date_of_birth", |v, value, path| {
            let dob = v.past_date(value, path)?;
            match latest_birth {
                Some((latest, what)) if dob > latest => {
                    v.report(path, format!("must not be after {what}"));
                    None
                }
                _ => v.alive_today(dob, path),
            }
        });
        let id_document = self.optional(&obj, "id_document", Self::id_document);
        let mut complete = true;
        for (khmer, latin) in [
            ("family_name", "family_name_latin"),
            ("given_name", "given_name_latin"),
        ] {
            if obj.get(khmer).is_none() && obj.get(latin).is_none() {
                self.report(
                    &obj.path(khmer),
                    format!("is required (or {latin}), unless kidc is given"),
                );
                complete = false;
            }
        }
        if obj.get("date_of_birth").is_none() && obj.get("id_document").is_none() {
            self.report(
                &obj.path("id_document"),
                "is required when date_of_birth is left out, unless kidc is given",
            );
            complete = false;
        }
        complete.then_some(())?;
        Some(IdentifyingDetails {
            family_name: family_name?,
            given_name: given_name?,
            family_name_latin: family_name_latin?,
            given_name_latin: given_name_latin?,
            date_of_birth: date_of_birth?,
            id_document: id_document?,
        })
    }
}
