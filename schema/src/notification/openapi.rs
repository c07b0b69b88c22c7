//! The OpenAPI schemas of the types that have none of their own
//! ([`Date`](crate::date::Date), [`GazetteerCode`](crate::gazetteer::GazetteerCode),
//! [`Sex`], [`PlaceKind`], [`IdDocumentKind`]), from those types' own
//! lists of values.

use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};

use crate::birth::{IdDocumentKind, PlaceKind, Sex};

fn string_of(values: &[&'static str], description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .build()
}

pub(super) fn sex_schema() -> Object {
    let values: Vec<&'static str> = Sex::ALL.iter().map(|s| s.as_str()).collect();
    string_of(&values, "Sex.")
}

pub(super) fn place_kind_schema() -> Object {
    let values: Vec<&'static str> = PlaceKind::ALL.iter().map(|s| s.as_str()).collect();
    string_of(&values, "Kind of place.")
}

pub(super) fn id_document_kind_schema() -> Object {
    let values: Vec<&'static str> = IdDocumentKind::ALL.iter().map(|s| s.as_str()).collect();
    string_of(&values, "Kind of identity document.")
}

pub(super) fn date_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
        .description(Some("A calendar date, YYYY-MM-DD."))
        .build()
}

pub(super) fn village_code_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[0-9]{8}$"))
        .description(Some(
            "An 8-digit village code of the national gazetteer (province 2 digits, \
             district 4, commune 6, village 8, each extending its parent).",
        ))
        .build()
}
