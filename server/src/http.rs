//! The HTTP interface, under `/v1`.
//!
//! * `GET /v1/health` → `{"status":"ok"}`;
//! * `POST /v1/enroll` (JSON [`EnrollRequest`] → [`EnrollResponse`]);
//! * `POST /v1/sync` (binary: a sealed `SyncRequest` → a sealed
//!   `SyncResponse`), with the header `x-crvs-protocol: 2`;
//! * `POST /v1/notifications` (JSON [`Notification`] →
//!   `{"notification_id"}`, `201` new, `200` a replay), with
//!   `Authorization: Bearer KEY` (an API key of scope `notify`);
//! * `GET /v1/openapi.json`: the OpenAPI document of the JSON API
//!   ([`crate::openapi`]);
//! * `GET /metrics`: Prometheus text, with `Authorization: Bearer TOKEN`
//!   (the scrape token; `404` when none is configured), see
//!   [`crate::metrics`].
//!
//! Handlers are thin: they move bytes to [`Server`] methods on the blocking
//! pool and return them. Errors become JSON in one place
//! ([`ApiError`]'s `IntoResponse`). Every request gets an `x-request-id`
//! (the client's own is kept only if it is at most 64 characters of
//! `[A-Za-z0-9._:-]`; otherwise it is replaced by a fresh UUID) that
//! appears in its log span; logs carry method, path, status and latency,
//! never bodies.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crvs_schema::wire::{
    EnrollRequest, EnrollResponse, FORMAT_VERSION, MAX_SYNC_REQUEST_BYTES, PROTOCOL_HEADER,
    REQUEST_HEADER_LEN, RequestHeader,
};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::api_keys::{self, Scope};
use crate::error::ApiError;
use crate::listener::ListenerConfig;
use crate::notify::body::{ErrorDoc, NotificationAccepted};
use crate::notify::{self, Notification};
use crate::{Server, admin};

/// Largest JSON body accepted (an enrolment request is about 400 bytes, a
/// notification about 1 KiB).
pub const MAX_JSON_BYTES: usize = 16 * 1024;

/// The limits of the HTTP layer. Every one bounds what a client can make
/// the server hold; [`Limits::default`] is what `crvs-server serve` uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time to receive the 129-byte authenticated header of a sync request.
    pub sync_header_timeout: Duration,
    /// The body of an authenticated sync request must arrive within this
    /// time plus one second per [`Limits::min_upload_rate`] bytes.
    pub sync_body_base_timeout: Duration,
    /// Slowest accepted upload, bytes per second (2G links manage more).
    pub min_upload_rate: u64,
    /// Bytes of sync bodies buffered at once, across all requests. Only
    /// authenticated requests draw from it (one per device at a time).
    pub body_budget_bytes: usize,
    /// How long a request waits for its share of the body budget, or for
    /// a worker, before it is told the server is busy (503).
    pub queue_timeout: Duration,
    /// Sync requests processed at once. Each uses up to four threads for
    /// its work before the writer (`crate::ingest`), then waits, without
    /// using a core, for its commit group (`crate::group_commit`): the
    /// more requests are in, the more share one commit and one sync.
    pub sync_workers: usize,
    /// Enrolments handled at once; more wait (their bodies unread).
    pub enroll_concurrency: usize,
    /// Time for a whole enrolment request.
    pub enroll_timeout: Duration,
    /// Notifications handled at once; more wait (their bodies unread).
    pub notify_concurrency: usize,
    /// Time for a whole notification request.
    pub notify_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sync_header_timeout: Duration::from_secs(20),
            sync_body_base_timeout: Duration::from_secs(30),
            min_upload_rate: 8 * 1024,
            body_budget_bytes: 64 << 20,
            queue_timeout: Duration::from_secs(30),
            sync_workers: 64,
            enroll_concurrency: 16,
            enroll_timeout: Duration::from_secs(30),
            notify_concurrency: 16,
            notify_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share: the server and the gates in front of it.
#[derive(Clone)]
pub(crate) struct App {
    server: Arc<Server>,
    limits: Arc<Limits>,
    /// The body budget, in KiB.
    body_budget: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    /// Devices with a sync request in flight.
    in_flight: Arc<Mutex<HashSet<Uuid>>>,
}

/// The application's routes over a shared [`Server`], with the default
/// [`Limits`].
pub fn router(server: Arc<Server>) -> Router {
    router_with(server, Limits::default())
}

/// The application's routes over a shared [`Server`].
pub fn router_with(server: Arc<Server>, limits: Limits) -> Router {
    let app = App {
        server,
        body_budget: Arc::new(Semaphore::new((limits.body_budget_bytes / 1024).max(1))),
        workers: Arc::new(Semaphore::new(limits.sync_workers.max(1))),
        in_flight: Arc::new(Mutex::new(HashSet::new())),
        limits: Arc::new(limits.clone()),
    };
    Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/enroll",
            post(enroll).layer((
                DefaultBodyLimit::max(MAX_JSON_BYTES),
                TimeoutLayer::with_status_code(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    limits.enroll_timeout,
                ),
                ConcurrencyLimitLayer::new(limits.enroll_concurrency.max(1)),
            )),
        )
        // The sync body is read by the handler itself, after the header is
        // authenticated, within its own limits and deadlines.
        .route("/v1/sync", post(sync).layer(DefaultBodyLimit::disable()))
        // The notification body is read by the handler after the API key
        // is checked, at most `MAX_JSON_BYTES`.
        .route(
            "/v1/notifications",
            post(post_notification).layer((
                TimeoutLayer::with_status_code(
                    axum::http::StatusCode::REQUEST_TIMEOUT,
                    limits.notify_timeout,
                ),
                ConcurrencyLimitLayer::new(limits.notify_concurrency.max(1)),
            )),
        )
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
        // Inside the routing: it sees the matched route's template.
        .layer(axum::middleware::from_fn(crate::metrics::track))
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
    State(app): State<App>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let Json(req) = body?;
    let server = app.server.clone();
    Ok(Json(blocking(move || admin::enroll(&server, &req)).await?))
}

/// `GET /metrics` (see [`crate::metrics`]).
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    crate::metrics::scrape(app.server.clone(), &headers).await
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        crate::openapi::document(),
    )
        .into_response()
}

/// Receives a birth or death notification.
///
/// The API key is checked first (through the read-only connection), and
/// only then is the body read, at most [`MAX_JSON_BYTES`]. A notification
/// sent again under the same `source.system` and `source.reference` with
/// the same content is answered `200` with the same id and creates
/// nothing.
#[utoipa::path(
    post,
    path = "/v1/notifications",
    tag = "notifications",
    request_body(
        content = Notification,
        content_type = "application/json",
        description = "A birth or death notification, at most 16 KiB."
    ),
    responses(
        (status = 201, description = "A new notification, stored and routed to the commune of residence", body = NotificationAccepted),
        (status = 200, description = "A replay of a notification received before (same source system, reference and content): the same id, nothing created", body = NotificationAccepted),
        (status = 400, description = "The body is not JSON (`malformed`)", body = ErrorDoc),
        (status = 401, description = "No API key, an unknown one or a revoked one (`unauthenticated`)", body = ErrorDoc,
            headers(("WWW-Authenticate" = String, description = "Bearer"))),
        (status = 403, description = "The API key lacks the scope notify (`forbidden`)", body = ErrorDoc),
        (status = 409, description = "Another notification was received under this source system and reference (`conflict`); nothing changed", body = ErrorDoc),
        (status = 413, description = "The body is larger than 16 KiB (`too_large`)", body = ErrorDoc),
        (status = 422, description = "The notification is invalid (`invalid_notification`): `problems` names every bad field", body = ErrorDoc),
    ),
    security(("api_key" = ["notify"]))
)]
pub(crate) async fn post_notification(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // 1. Who is it? Nothing of the body is read before.
    let key = api_keys::bearer(&headers)?;
    let server = app.server.clone();
    let key = blocking(move || api_keys::authenticate(&server, &key, Scope::Notify)).await?;

    // 2. The body, bounded.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_JSON_BYTES as u64) {
        return Err(ApiError::TooLarge(MAX_JSON_BYTES));
    }
    let bytes = http_body_util::Limited::new(body, MAX_JSON_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge(MAX_JSON_BYTES)
            } else {
                ApiError::Malformed("the request body could not be read".into())
            }
        })?
        .to_bytes();

    // 3. Validate and store (under the writer).
    let server = app.server.clone();
    let received = blocking(move || notify::receive(&server, &key, &bytes)).await?;
    let status = if received.created {
        axum::http::StatusCode::CREATED
    } else {
        axum::http::StatusCode::OK
    };
    Ok((
        status,
        Json(NotificationAccepted {
            notification_id: received.notification_id.to_string(),
        }),
    )
        .into_response())
}

/// Removes its device from the in-flight set when the request ends, however
/// it ends.
struct InFlight {
    set: Arc<Mutex<HashSet<Uuid>>>,
    device: Uuid,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.device);
    }
}

/// Reads body frames into `buf` until it holds `want` bytes; more than
/// `want` is an error, and so is an end before.
async fn read_into(body: &mut Body, buf: &mut Vec<u8>, want: usize) -> Result<(), ApiError> {
    while buf.len() < want {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > want {
                        return Err(ApiError::Malformed(
                            "the body is longer than its signed header says".into(),
                        ));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => return Err(ApiError::Malformed("the request body could not be read".into())),
            None => return Err(ApiError::Malformed("the request body is truncated".into())),
        }
    }
    Ok(())
}

async fn sync(State(app): State<App>, headers: HeaderMap, mut body: Body) -> Result<Response, ApiError> {
    match headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    {
        Some(v) if v == FORMAT_VERSION.to_string() => {}
        Some("1") => return Err(ApiError::UpgradeRequired),
        _ => return Err(ApiError::UnsupportedProtocol),
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_SYNC_REQUEST_BYTES as u64) {
        return Err(ApiError::TooLarge(MAX_SYNC_REQUEST_BYTES));
    }
    let limits = app.limits.clone();

    // 1. The authenticated header, and nothing more, within its deadline.
    let mut buf: Vec<u8> = Vec::with_capacity(REQUEST_HEADER_LEN);
    tokio::time::timeout(limits.sync_header_timeout, async {
        while buf.len() < REQUEST_HEADER_LEN {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        // Keep at most what a whole request may hold.
                        if buf.len() + data.len() > MAX_SYNC_REQUEST_BYTES {
                            return Err(ApiError::TooLarge(MAX_SYNC_REQUEST_BYTES));
                        }
                        buf.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) => return Err(ApiError::Malformed("the request body could not be read".into())),
                None => break,
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| ApiError::RequestTimeout)??;
    let header = RequestHeader::parse(&buf).map_err(ApiError::from_wire)?;

    // 2. Who is it, and is it new? (The read-only connection: no writer.)
    let server = app.server.clone();
    let auth_header = header.clone();
    let (device, _) = blocking(move || crate::ingest::authenticate(&server, &auth_header)).await?;
    let total = REQUEST_HEADER_LEN + header.body_len() as usize;
    if declared.is_some_and(|n| n != total as u64) {
        return Err(ApiError::Malformed(
            "the content length does not match the request's signed header".into(),
        ));
    }
    if buf.len() > total {
        return Err(ApiError::Malformed(
            "the body is longer than its signed header says".into(),
        ));
    }

    // 3. One request per device at a time.
    let _in_flight = {
        let mut set = app.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(device.device_id) {
            return Err(ApiError::SyncInProgress);
        }
        InFlight {
            set: app.in_flight.clone(),
            device: device.device_id,
        }
    };

    // 4. Room for the body in the shared budget, then the body, within a
    // deadline that allows a slow link but not a stalled one.
    let kib = u32::try_from(total.div_ceil(1024)).unwrap_or(u32::MAX);
    let _room = tokio::time::timeout(
        limits.queue_timeout,
        app.body_budget.clone().acquire_many_owned(kib),
    )
    .await
    .map_err(|_| ApiError::Busy)?
    .map_err(|_| ApiError::Busy)?;
    let deadline =
        limits.sync_body_base_timeout + Duration::from_secs(total as u64 / limits.min_upload_rate.max(1));
    let mut whole = Vec::with_capacity(total);
    whole.extend_from_slice(&buf);
    drop(buf);
    tokio::time::timeout(deadline, read_into(&mut body, &mut whole, total))
        .await
        .map_err(|_| ApiError::RequestTimeout)??;

    // 5. A worker, then the work (which checks everything again, under
    // the writer).
    let _worker = tokio::time::timeout(limits.queue_timeout, app.workers.clone().acquire_owned())
        .await
        .map_err(|_| ApiError::Busy)?
        .map_err(|_| ApiError::Busy)?;
    let server = app.server.clone();
    let answer = blocking(move || server.handle_sync(&whole)).await?;
    crate::fault::point("after_commit");
    let answer = if crate::fault::fires("mid_answer") {
        Body::new(HalfThenAbort::new(Bytes::from(answer)))
    } else {
        Body::from(answer)
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                axum::http::HeaderName::from_static(PROTOCOL_HEADER),
                HeaderValue::from(u16::from(FORMAT_VERSION)),
            ),
        ],
        answer,
    )
        .into_response())
}

/// The answer body when the fault point `mid_answer` fires: the first half
/// of the bytes, then, once hyper has had the time to write them to the
/// socket (it flushes while the body is pending), an abort. Its exact size
/// goes in `Content-Length`, so the tablet knows the answer is cut.
struct HalfThenAbort {
    first: Option<Bytes>,
    total: u64,
    wait: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl HalfThenAbort {
    fn new(answer: Bytes) -> HalfThenAbort {
        HalfThenAbort {
            total: answer.len() as u64,
            first: Some(answer.slice(..answer.len() / 2)),
            wait: None,
        }
    }
}

impl hyper::body::Body for HalfThenAbort {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        if let Some(first) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(first))));
        }
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(200))));
        match wait.as_mut().poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(()) => crate::fault::abort_at("mid_answer"),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.total)
    }
}
