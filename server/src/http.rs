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
//! (kept if the client sent one) that appears in its log span; logs carry
//! method, path, status and latency, never bodies.

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
use crate::listener::ListenerConfig;
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
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
/// Plain HTTP with the default limits of [`crate::listener`].
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_config(listener, server, ListenerConfig::default(), shutdown).await
}

/// Serves with the connection limits and (optional) TLS of `config` until
/// `shutdown` completes, then finishes the requests in flight. See
/// [`crate::listener`].
pub async fn serve_with_config(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    config: ListenerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::listener::serve(listener, router(server), config, shutdown).await
}

/// Serves on a bound listener until the process stops (plain HTTP, the
/// default limits).
pub async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>) -> std::io::Result<()> {
    serve_with_shutdown(listener, server, std::future::pending()).await
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
