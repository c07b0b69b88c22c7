//! The server's error type and its one mapping to HTTP.
//!
//! **API boundary:** every failure a client can see is an [`ApiError`];
//! [`ApiError::status`] and [`ApiError::code`] are the only place that
//! decides its HTTP status and stable code, and its `IntoResponse` writes
//! the JSON body `{"error": code, "message": text}`
//! ([`crvs_schema::wire::ErrorBody`]). Messages never carry personal data
//! or echo the input.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crvs_schema::wire::{ErrorBody, WireError};

use crate::storage::StorageError;

/// Everything that can go wrong in a request or an operator command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The body does not decode (random bytes, truncated, bad JSON).
    #[error("the request body is malformed: {0}")]
    Malformed(String),
    /// The body is larger than the endpoint's limit.
    #[error("the request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// Missing or unknown `x-crvs-protocol` header.
    #[error("unsupported sync protocol: send the header x-crvs-protocol: 2")]
    UnsupportedProtocol,
    /// A tablet of an older version: its requests could be replayed.
    #[error(
        "this app is too old for the server: update it, then sync again; the registrations waiting on the tablet are kept and will be sent"
    )]
    UpgradeRequired,
    /// The device id is not enrolled.
    #[error("unknown device")]
    UnknownDevice,
    /// The request signature does not verify with the device's key.
    #[error("the request signature does not verify with the device's enrolled key")]
    BadRequestSignature,
    /// The request's counter is not above the last one accepted from the
    /// device: a replay, a reordered request, or a tablet restored from an
    /// old backup of its store. Nothing was recorded.
    #[error(
        "this request was already seen (its counter is not above {last_counter}); a tablet restored from a backup continues above it"
    )]
    ReplayedRequest {
        /// The last counter accepted from the device.
        last_counter: u64,
    },
    /// The request did not arrive in time (a stalled or far too slow
    /// upload). Nothing was applied.
    #[error("the request did not arrive in time; nothing was applied: sync again")]
    RequestTimeout,
    /// The server is at its limits right now. Nothing was applied.
    #[error("the server is busy; nothing was applied: sync again in a minute")]
    Busy,
    /// Another sync request of the same device is still being processed.
    #[error("a sync of this device is still being processed; sync again in a minute")]
    SyncInProgress,
    /// The device was revoked by an operator.
    #[error("this device has been revoked; contact the sync operators")]
    DeviceRevoked,
    /// The enrolment token is unknown.
    #[error("unknown enrolment token")]
    UnknownToken,
    /// The enrolment token was used already.
    #[error("this enrolment token has already been used")]
    TokenUsed,
    /// The enrolment token expired.
    #[error("this enrolment token has expired")]
    TokenExpired,
    /// The enrolment token is for another office than the tablet's store.
    /// The token is not used up. Office codes are not personal data.
    #[error(
        "this enrolment token is for office {token_office}, but the tablet's store belongs to office {store_office}; the token is still valid for a tablet of office {token_office}"
    )]
    WrongOffice {
        /// The office the token was made for.
        token_office: String,
        /// The office the tablet's store belongs to.
        store_office: String,
    },
    /// A request or command argument is invalid (message says which).
    #[error("{0}")]
    Invalid(String),
    /// An operator command named a device that does not exist.
    #[error("no device with id {0}")]
    NoSuchDevice(String),
    /// An operator command named a staff member who is not on the
    /// office's roster. Staff ids are not personal data.
    #[error("{staff_id} is not on the roster of commune {office}")]
    NoSuchStaff {
        /// The office (commune code).
        office: String,
        /// The staff id as given.
        staff_id: String,
    },
    /// No API key, or not one of ours, or a revoked one: the answer does
    /// not say which (`401` with `WWW-Authenticate: Bearer`).
    #[error("a valid API key is required: send the header Authorization: Bearer KEY")]
    Unauthenticated,
    /// A valid API key without the endpoint's scope (`403`).
    #[error("this API key does not have the scope {0}")]
    MissingScope(&'static str),
    /// A notification that fails validation (`422`); the message names
    /// every bad field and repeats no value.
    #[error("the notification is invalid: {0}")]
    InvalidNotification(crvs_schema::ValidationError),
    /// Another notification was received under the same source system and
    /// reference (`409`). Nothing was changed.
    #[error(
        "another notification was received under this source system and reference; nothing was changed (send a new reference for a new notification)"
    )]
    NotificationConflict,
    /// An operator command named an API key that does not exist.
    #[error("no API key with id {0}")]
    NoSuchApiKey(String),
    /// An operator asked for a person the registry does not hold.
    #[error("no person with this KIdC in the registry")]
    NoSuchPerson,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// The route exists with another method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// Storage failed.
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
    /// Anything else that is the server's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) | ApiError::Invalid(_) | ApiError::UnsupportedProtocol => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::UnknownDevice
            | ApiError::BadRequestSignature
            | ApiError::UnknownToken
            | ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::DeviceRevoked | ApiError::MissingScope(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidNotification(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::SyncInProgress => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TokenUsed
            | ApiError::WrongOffice { .. }
            | ApiError::ReplayedRequest { .. }
            | ApiError::NotificationConflict => StatusCode::CONFLICT,
            ApiError::TokenExpired => StatusCode::GONE,
            ApiError::NoSuchDevice(_)
            | ApiError::NoSuchStaff { .. }
            | ApiError::NoSuchApiKey(_)
            | ApiError::NoSuchPerson
            | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Storage(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) => "malformed",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedProtocol => "unsupported_protocol",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::UnknownDevice => "unknown_device",
            ApiError::BadRequestSignature => "bad_signature",
            ApiError::DeviceRevoked => "device_revoked",
            ApiError::RequestTimeout => "timeout",
            ApiError::Busy => "busy",
            ApiError::SyncInProgress => "sync_in_progress",
            ApiError::ReplayedRequest { .. } => "replayed_request",
            ApiError::UnknownToken => "invalid_token",
            ApiError::TokenUsed => "token_used",
            ApiError::TokenExpired => "token_expired",
            ApiError::WrongOffice { .. } => "wrong_office",
            ApiError::Invalid(_) => "invalid_argument",
            ApiError::NoSuchDevice(_) => "unknown_device",
            ApiError::NoSuchStaff { .. } => "unknown_staff",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::MissingScope(_) => "forbidden",
            ApiError::InvalidNotification(_) => "invalid_notification",
            ApiError::NotificationConflict => "conflict",
            ApiError::NoSuchApiKey(_) => "unknown_api_key",
            ApiError::NotFound | ApiError::NoSuchPerson => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Storage(_) => "storage_error",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            // Internal details go to the log, not to the client.
            ApiError::Storage(_) | ApiError::Internal(_) => "the server failed; try again later".to_string(),
            other => other.to_string(),
        };
        ErrorBody {
            error: self.code().to_string(),
            message,
            last_counter: match self {
                ApiError::ReplayedRequest { last_counter } => Some(*last_counter),
                _ => None,
            },
        }
    }

    /// Maps a decoding error of an untrusted sync body.
    pub fn from_wire(e: WireError) -> ApiError {
        match e {
            WireError::TooLarge { limit } => ApiError::TooLarge(limit),
            WireError::UnsupportedVersion(1) => ApiError::UpgradeRequired,
            other => ApiError::Malformed(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::info!(code = self.code(), status = status.as_u16(), "request refused");
        }
        let mut body = match serde_json::to_value(self.body()) {
            Ok(body) => body,
            Err(_) => serde_json::json!({"error": self.code(), "message": "the server failed"}),
        };
        if let ApiError::InvalidNotification(e) = &self {
            // Every bad field by its path, with what is expected of it.
            body["problems"] = serde_json::to_value(&e.problems).unwrap_or_default();
        }
        let challenge = match &self {
            ApiError::Unauthenticated => Some("Bearer realm=\"crvs\"".to_string()),
            ApiError::MissingScope(scope) => Some(format!(
                "Bearer realm=\"crvs\", error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            _ => None,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(challenge) = challenge.and_then(|c| axum::http::HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, challenge);
        }
        if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("60"),
            );
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(crvs_schema::wire::MAX_SYNC_REQUEST_BYTES)
        } else {
            ApiError::Malformed("the request body could not be read".into())
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(crate::http::MAX_JSON_BYTES)
        } else {
            // The rejection text describes the JSON error by position, never
            // the values.
            ApiError::Malformed(format!("the JSON body does not decode ({})", r.status().as_u16()))
        }
    }
}
