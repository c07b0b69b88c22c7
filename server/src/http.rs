//! The HTTP interface, under `/v1`.
//!
//! * `GET /v1/health` → `{"status":"ok"}`;
//! * `POST /v1/enroll` (JSON [`EnrollRequest`] → [`EnrollResponse`]);
//! * `POST /v1/sync` (binary: a sealed `SyncRequest` → a sealed
//!   `SyncResponse`), with the header `x-crvs-protocol: 1`.
//!
//! Handlers are thin: they move bytes to [`Server`] methods on the blocking
//! pool and return them. Errors become JSON in one place
//! ([`ApiError`]'s `IntoResponse`). Every request gets an `x-request-id`
//! (the client's own is kept only if it is at most 64 characters of
//! `[A-Za-z0-9._:-]`; otherwise it is replaced by a fresh UUID) that
//! appears in its log span; logs carry method, path, status and latency,
//! never bodies.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crvs_schema::wire::{
    EnrollRequest, EnrollResponse, FORMAT_VERSION, MAX_SYNC_REQUEST_BYTES, PROTOCOL_HEADER,
};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::{Server, admin};

/// Largest JSON body accepted.
pub const MAX_JSON_BYTES: usize = 64 * 1024;

/// The application's routes over a shared [`Server`].
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/enroll",
            post(enroll).layer(DefaultBodyLimit::max(MAX_JSON_BYTES)),
        )
        .route(
            "/v1/sync",
            post(sync).layer(DefaultBodyLimit::max(MAX_SYNC_REQUEST_BYTES)),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(server)
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req
                .extensions()
                .get::<RequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unsafe_request_id))
}

/// Longest client-supplied `x-request-id` kept.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Whether a client's request id may go into the logs as it is: short, and
/// only letters, digits, `-`, `_`, `.` and `:`. Anything else (a newline, a
/// quote, an escape sequence, 8 KB of text) could forge log fields.
pub fn is_safe_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Removes a client's `x-request-id` that is not safe to log, so that the
/// request gets a fresh UUID instead (runs before `SetRequestIdLayer`).
async fn drop_unsafe_request_id(mut req: Request<axum::body::Body>) -> Request<axum::body::Body> {
    let headers = req.headers_mut();
    let safe = {
        let mut ids = headers.get_all("x-request-id").iter();
        match (ids.next(), ids.next()) {
            (None, _) => true,
            (Some(id), None) => is_safe_request_id(id.as_bytes()),
            (Some(_), Some(_)) => false,
        }
    };
    if !safe {
        headers.remove("x-request-id");
    }
    req
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves on a bound listener until the process stops.
pub async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>) -> std::io::Result<()> {
    axum::serve(listener, router(server)).await
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Runs blocking server work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::Internal("a request task failed".into()))?
}

async fn enroll(
    State(server): State<Arc<Server>>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let Json(req) = body?;
    Ok(Json(blocking(move || admin::enroll(&server, &req)).await?))
}

async fn sync(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let version = FORMAT_VERSION.to_string();
    match headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()) {
        Some(v) if v.trim() == version => {}
        _ => return Err(ApiError::UnsupportedProtocol),
    }
    let body = body?;
    let answer = blocking(move || server.handle_sync(&body)).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                axum::http::HeaderName::from_static(PROTOCOL_HEADER),
                HeaderValue::from_static("1"),
            ),
        ],
        answer,
    )
        .into_response())
}
