//! The body of `POST /v1/notifications` and its answers.
//!
//! The body's types, one typed struct per kind, are
//! [`crvs_schema::notification`]'s (with its `openapi` feature, which
//! derives their `utoipa::ToSchema`): the validation there builds them,
//! the database stores them as JSON, and the OpenAPI document
//! ([`crate::openapi`]) is generated from them, so the document cannot
//! drift from what the server accepts. The answers' types are here.

pub use crvs_schema::notification::{
    BirthKind, BirthNotification, BirthType, CauseOfDeath, DeathKind, DeathNotification, Deceased,
    Notification, NotifiedChild, NotifiedIdDocument, NotifiedMother, NotifiedPlace, Source,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The answer to an accepted notification (`201`) or to a replay of one
/// (`200`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NotificationAccepted {
    /// The notification's id (a UUIDv7), the same for every replay.
    #[schema(format = Uuid)]
    pub notification_id: String,
}

/// A problem with one field of a refused notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProblemDoc {
    /// The field's dotted path, such as `child.date_of_birth` (`$`: the
    /// whole body).
    pub field: String,
    /// What is expected of it. Never the value sent.
    pub problem: String,
}

/// Every error answer: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDoc {
    /// A stable code: `unauthenticated` (401), `forbidden` (403),
    /// `invalid_notification` (422), `conflict` (409), `too_large` (413),
    /// `malformed` (400), `internal_error` (500).
    pub error: String,
    /// For people; names fields, never repeats a value.
    pub message: String,
    /// With `invalid_notification`: every bad field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<ProblemDoc>>,
}
