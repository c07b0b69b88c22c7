//! `GET /metrics`: what operators scrape, in the Prometheus text format.
//!
//! The [`metrics`](::metrics) facade records; the exporter of
//! `metrics-exporter-prometheus` (without its own listener: axum serves
//! the text) renders. The recorder is installed once per process, and only
//! when a scrape token is configured ([`MetricsToken`]; `crvs-server serve
//! --metrics-token-file FILE` or `CRVS_METRICS_TOKEN`): without one the
//! macros record nothing, and `/metrics` answers `404` like any unknown
//! path. With one, a request without `Authorization: Bearer TOKEN`, or
//! with another token, is answered `401` with an empty body; the token is
//! compared in constant time (as SHA-256 digests, so its length does not
//! show either).
//!
//! What it shows (labels are route templates, status codes, reason codes
//! and bucket names only: never a raw path, a device id or anything a
//! person typed):
//!
//! * `crvs_http_requests_total{route,status}` and the histogram
//!   `crvs_http_request_duration_seconds{route,status}` (time to the
//!   response's head). `route` is axum's matched route template
//!   (`/v1/sync`); a path no route matches is `unmatched`.
//! * `crvs_change_sets_total{outcome,reason}`: `outcome="applied"`
//!   (`reason="none"`) for every change set applied, `outcome="refused"`
//!   with the refusal code ([`crvs_schema::wire::RefusalCode::as_str`]).
//!   Counted after the request's commit group committed: a request that
//!   fails or is rolled back counts nothing. Resends acknowledged as
//!   already applied are not counted.
//! * `crvs_kidc_issued_total{reason}`: codes written to the issuance log
//!   by sync requests, `reason="birth_approved"` (new) or
//!   `"recorded_again"` (after a restore); counted after the commit, and
//!   not for a change set rolled back.
//! * `crvs_sync_conflicts_total`: sync requests whose transaction the
//!   database rolled back for a deadlock or a serialization failure
//!   (PostgreSQL, several writers) and that ran again; the tablet never
//!   sees one. A rate that climbs means writers contend.
//! * At scrape time, read from storage on the blocking pool:
//!   `crvs_holds_open` (records held and not released),
//!   `crvs_devices{since}` (non-revoked devices by the time since their
//!   last sync: `1h`, `1d`, `7d`, `30d`, `older`, `never`),
//!   `crvs_devices_revoked`, and `crvs_device_sync_age_max_seconds` (the
//!   longest time since the last sync of a non-revoked device that synced
//!   at least once).
//!
//! * Also at scrape time: what tablets reported with their last sync
//!   (`crvs_tablet_outbox_change_sets`, `crvs_tablet_outbox_records`,
//!   `crvs_devices_by_app_version{version}`), and the update feed's lag:
//!   `crvs_feed_lag_max_seconds`, the age of the oldest feed entry some
//!   non-revoked device has not been sent yet (each answer stores the
//!   feed position it carries; [`crate::storage::Storage::feed_waiting_since`]
//!   finds the first entry after it), and `crvs_devices_behind_feed`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::Server;
use crate::error::ApiError;
use crate::storage::Device;

/// The environment variable that may hold the scrape token.
pub const TOKEN_ENV: &str = "CRVS_METRICS_TOKEN";
/// The shortest token accepted, in characters.
pub const MIN_TOKEN_LEN: usize = 32;
/// The longest token accepted, in bytes (a header line stays small).
pub const MAX_TOKEN_LEN: usize = 1024;

/// Requests by route and status.
pub const HTTP_REQUESTS: &str = "crvs_http_requests_total";
/// Request latency, seconds.
pub const HTTP_DURATION: &str = "crvs_http_request_duration_seconds";
/// Change sets applied and refused.
pub const CHANGE_SETS: &str = "crvs_change_sets_total";
/// KIdCs issued.
pub const KIDC_ISSUED: &str = "crvs_kidc_issued_total";
/// Records held and not released (scrape time).
pub const HOLDS_OPEN: &str = "crvs_holds_open";
/// Non-revoked devices by time since their last sync (scrape time).
pub const DEVICES: &str = "crvs_devices";
/// Revoked devices (scrape time).
pub const DEVICES_REVOKED: &str = "crvs_devices_revoked";
/// The longest time since the last sync of a non-revoked device.
pub const SYNC_AGE_MAX: &str = "crvs_device_sync_age_max_seconds";
/// Gauge: change sets waiting in tablets' outboxes, as each reported at
/// its last sync (sync version 6), summed over non-revoked devices.
pub const OUTBOX_CHANGE_SETS: &str = "crvs_tablet_outbox_change_sets";
/// Gauge: records waiting in tablets' outboxes, likewise.
pub const OUTBOX_RECORDS: &str = "crvs_tablet_outbox_records";
/// Gauge: non-revoked devices by the app version they reported
/// (`unknown`: none reported yet, or a tablet older than sync version 6).
pub const DEVICES_BY_VERSION: &str = "crvs_devices_by_app_version";
/// Gauge: the feed's lag: the age of the oldest feed entry some
/// non-revoked device has not been sent yet (0: every device is up to
/// date).
pub const FEED_LAG_MAX: &str = "crvs_feed_lag_max_seconds";
/// Gauge: non-revoked devices whose feed holds entries they have not been
/// sent yet.
pub const DEVICES_BEHIND_FEED: &str = "crvs_devices_behind_feed";
/// Counter: commit groups run (write transactions of sync requests).
pub const COMMIT_GROUPS: &str = "crvs_commit_groups_total";
/// Counter: sync requests run in commit groups (over the groups: requests
/// per transaction).
pub const COMMIT_GROUP_REQUESTS: &str = "crvs_commit_group_requests_total";
/// Gauge, only ever rising: seconds the writer spent running commit
/// groups since the start. Its rate is the writer's utilisation: near 1,
/// the writer is the bottleneck and requests queue.
pub const WRITER_BUSY: &str = "crvs_writer_busy_seconds";
/// Gauge: sync requests waiting for the next commit group.
pub const WRITER_QUEUE: &str = "crvs_writer_queue";
/// Sync requests run again after a conflict.
pub const SYNC_CONFLICTS: &str = "crvs_sync_conflicts_total";
/// At most this many distinct versions are labelled; the rest count as
/// `other` (the label set stays bounded whatever tablets claim).
pub const MAX_VERSION_LABELS: usize = 16;

/// The latency buckets, seconds: a health check takes a millisecond, a
/// large first sync over 2G tens of seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often the recorder drains its histograms when nobody scrapes (it
/// keeps samples until then).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The bearer token that lets a scraper read `/metrics`. Never printed
/// (its `Debug` hides it) and wiped from memory when dropped.
pub struct MetricsToken {
    digest: [u8; 32],
    _text: Zeroizing<String>,
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(..)")
    }
}

impl MetricsToken {
    /// A token from its text (surrounding whitespace, such as a file's
    /// final newline, is dropped): at least [`MIN_TOKEN_LEN`] characters,
    /// visible ASCII only, as an HTTP header carries it.
    pub fn new(text: &str) -> Result<MetricsToken, String> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the metrics token is shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        if text.len() > MAX_TOKEN_LEN {
            return Err(format!("the metrics token is longer than {MAX_TOKEN_LEN} bytes"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the metrics token must be visible ASCII characters, without spaces".into());
        }
        Ok(MetricsToken {
            digest: Sha256::digest(text.as_bytes()).into(),
            _text: Zeroizing::new(text.to_string()),
        })
    }

    /// The token held in `path`, which only its owner may read: a file
    /// readable or writable by its group or by others is refused (on
    /// unix), as is a token shorter than [`MIN_TOKEN_LEN`].
    pub fn from_file(path: &std::path::Path) -> Result<MetricsToken, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the metrics token file {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("the metrics token file {} is not a file", path.display()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "the metrics token file {} has mode {mode:o}: others than its owner may read it; chmod 600 it",
                    path.display()
                ));
            }
        }
        if meta.len() > MAX_TOKEN_LEN as u64 + 2 {
            return Err(format!("the metrics token is longer than {MAX_TOKEN_LEN} bytes"));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the metrics token file {}: {e}", path.display()))?,
        );
        MetricsToken::new(&text)
    }

    /// The token of [`TOKEN_ENV`], if it is set.
    pub fn from_env() -> Option<Result<MetricsToken, String>> {
        let text = Zeroizing::new(std::env::var(TOKEN_ENV).ok()?);
        Some(MetricsToken::new(&text).map_err(|e| format!("{TOKEN_ENV}: {e}")))
    }

    /// Whether `presented` is the token, in time independent of where
    /// they differ (and of its length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        bool::from(self.digest.ct_eq(&digest))
    }

    /// Whether the request's `Authorization: Bearer` header carries the
    /// token (exactly one such header).
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return false;
        };
        let text = value.as_bytes();
        let Some(space) = text.iter().position(|b| *b == b' ') else {
            return false;
        };
        let (scheme, rest) = text.split_at(space);
        scheme.eq_ignore_ascii_case(b"bearer") && self.matches(rest.trim_ascii())
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same
/// handle), with the latency buckets and a thread that drains histograms
/// every few seconds. `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), DURATION_BUCKETS)
                .expect("the buckets are not empty");
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "the metrics recorder could not be installed");
                    return None;
                }
            };
            describe();
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no metrics upkeep thread: histograms are drained at scrapes only");
            }
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HTTP_REQUESTS, "HTTP requests by route template and status code");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency to the response's head, by route template and status code"
    );
    describe_counter!(
        CHANGE_SETS,
        "Change sets applied, and refused by refusal code, counted after their commit"
    );
    describe_counter!(
        KIDC_ISSUED,
        "KIdCs written to the issuance log by sync requests, counted after their commit"
    );
    describe_gauge!(HOLDS_OPEN, "Records held for review and not released");
    describe_gauge!(
        DEVICES,
        "Non-revoked devices by time since their last sync (never: not yet synced)"
    );
    describe_gauge!(DEVICES_REVOKED, "Revoked devices");
    describe_gauge!(
        OUTBOX_CHANGE_SETS,
        "Change sets waiting in the outboxes of non-revoked tablets, as each reported at its last sync"
    );
    describe_gauge!(
        OUTBOX_RECORDS,
        "Records waiting in the outboxes of non-revoked tablets, as each reported at its last sync"
    );
    describe_gauge!(
        DEVICES_BY_VERSION,
        "Non-revoked devices by the app version they reported (unknown: none yet; other: beyond the labelled versions)"
    );
    describe_gauge!(
        FEED_LAG_MAX,
        Unit::Seconds,
        "Age of the oldest update-feed entry some non-revoked device that synced has not been sent yet"
    );
    describe_gauge!(
        DEVICES_BEHIND_FEED,
        "Non-revoked devices that synced and have update-feed entries not sent to them yet"
    );
    describe_counter!(
        COMMIT_GROUPS,
        "Commit groups run: write transactions of sync requests"
    );
    describe_counter!(COMMIT_GROUP_REQUESTS, "Sync requests run in commit groups");
    describe_gauge!(
        WRITER_BUSY,
        Unit::Seconds,
        "Time the writer spent running commit groups since the start; its rate near 1 means the writer is the bottleneck"
    );
    describe_gauge!(WRITER_QUEUE, "Sync requests waiting for the next commit group");
    describe_counter!(
        SYNC_CONFLICTS,
        "Sync requests whose transaction the database rolled back for a deadlock or serialization failure, run again"
    );
    describe_gauge!(
        SYNC_AGE_MAX,
        Unit::Seconds,
        "Longest time since the last sync of a non-revoked device that synced (an upper bound of its feed lag)"
    );
}

/// Middleware: counts every request by its matched route template and
/// status, and observes its latency. A path no route matches is counted
/// as `unmatched` (never the raw path: unbounded, and it could carry
/// anything).
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    ::metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "status" => status.clone()).increment(1);
    ::metrics::histogram!(HTTP_DURATION, "route" => route, "status" => status)
        .record(start.elapsed().as_secs_f64());
    response
}

/// Counts one sync request run again after a conflict.
pub(crate) fn count_conflict() {
    ::metrics::counter!(SYNC_CONFLICTS).increment(1);
}

/// Counts one committed sync request's change sets and codes.
pub(crate) fn count_sync(
    applied: usize,
    refused: Option<&'static str>,
    kidcs_new: usize,
    kidcs_again: usize,
) {
    if applied > 0 {
        ::metrics::counter!(CHANGE_SETS, "outcome" => "applied", "reason" => "none")
            .increment(applied as u64);
    }
    if let Some(code) = refused {
        ::metrics::counter!(CHANGE_SETS, "outcome" => "refused", "reason" => code).increment(1);
    }
    if kidcs_new > 0 {
        ::metrics::counter!(KIDC_ISSUED, "reason" => crate::ingest::REASON_BIRTH_APPROVED)
            .increment(kidcs_new as u64);
    }
    if kidcs_again > 0 {
        ::metrics::counter!(KIDC_ISSUED, "reason" => "recorded_again").increment(kidcs_again as u64);
    }
}

/// The buckets of `crvs_devices{since}`, upper bounds in ms.
const SINCE_BUCKETS: &[(&str, i64)] = &[
    ("1h", 3_600_000),
    ("1d", 86_400_000),
    ("7d", 7 * 86_400_000),
    ("30d", 30 * 86_400_000),
];

/// What a scrape reads from storage.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FleetGauges {
    /// Records held and not released.
    pub holds_open: u64,
    /// Non-revoked devices per `since` bucket, in the order `1h`, `1d`,
    /// `7d`, `30d`, `older`, `never`.
    pub devices: [(&'static str, u64); 6],
    /// Revoked devices.
    pub revoked: u64,
    /// The longest time since a non-revoked device's last sync, ms.
    pub sync_age_max_ms: Option<i64>,
    /// Change sets and records waiting in tablets' outboxes, as reported.
    pub outbox: (u64, u64),
    /// Non-revoked devices by reported app version, sorted by version; at
    /// most [`MAX_VERSION_LABELS`] versions, then `other`, and `unknown`.
    pub versions: Vec<(String, u64)>,
    /// Non-revoked devices with feed entries not sent yet.
    pub behind_feed: u64,
    /// The age of the oldest such entry, ms.
    pub feed_lag_max_ms: Option<i64>,
}

/// Counts devices by the time since their last sync at `now_ms`;
/// `waiting`: for devices with feed entries not sent yet, when the oldest
/// was written.
pub fn fleet(
    devices: &[Device],
    holds_open: u64,
    now_ms: i64,
    waiting: &std::collections::HashMap<uuid::Uuid, i64>,
) -> FleetGauges {
    let mut out = FleetGauges {
        holds_open,
        devices: [
            ("1h", 0),
            ("1d", 0),
            ("7d", 0),
            ("30d", 0),
            ("older", 0),
            ("never", 0),
        ],
        revoked: 0,
        sync_age_max_ms: None,
        outbox: (0, 0),
        versions: Vec::new(),
        behind_feed: 0,
        feed_lag_max_ms: None,
    };
    let mut versions = std::collections::BTreeMap::<&str, u64>::new();
    for d in devices {
        if d.revoked_at_ms.is_some() {
            out.revoked += 1;
            continue;
        }
        if let Some(&since) = waiting.get(&d.device_id) {
            out.behind_feed += 1;
            let lag = now_ms.saturating_sub(since).max(0);
            out.feed_lag_max_ms = Some(out.feed_lag_max_ms.map_or(lag, |m| m.max(lag)));
        }
        match &d.report {
            Some(r) => {
                out.outbox.0 += r.change_sets_waiting;
                out.outbox.1 += r.records_waiting;
                *versions.entry(r.app_version.as_str()).or_default() += 1;
            }
            None => *versions.entry("unknown").or_default() += 1,
        }
        let slot = match d.last_sync_at_ms {
            None => 5,
            Some(at) => {
                let age = now_ms.saturating_sub(at).max(0);
                out.sync_age_max_ms = Some(out.sync_age_max_ms.map_or(age, |m| m.max(age)));
                SINCE_BUCKETS
                    .iter()
                    .position(|(_, limit)| age <= *limit)
                    .unwrap_or(4)
            }
        };
        out.devices[slot].1 += 1;
    }
    let unknown = versions.remove("unknown");
    let mut other = 0;
    for (i, (v, n)) in versions.into_iter().enumerate() {
        if i < MAX_VERSION_LABELS {
            out.versions.push((v.to_string(), n));
        } else {
            other += n;
        }
    }
    if other > 0 {
        out.versions.push(("other".into(), other));
    }
    if let Some(n) = unknown {
        out.versions.push(("unknown".into(), n));
    }
    out
}

fn read_fleet(server: &Server) -> Result<FleetGauges, ApiError> {
    let storage = server.storage();
    let holds = storage.holds()?.len() as u64;
    let devices = storage.list_devices()?;
    // One indexed lookup per device that synced (a first entry only).
    let mut waiting = std::collections::HashMap::new();
    for d in devices.iter().filter(|d| d.revoked_at_ms.is_none()) {
        if let Some(cursor) = d.feed_sent_cursor
            && let Some(since) = storage.feed_waiting_since(d.device_id, cursor)?
        {
            waiting.insert(d.device_id, since);
        }
    }
    Ok(fleet(&devices, holds, server.now_ms(), &waiting))
}

/// Answers `GET /metrics`: `404` without a configured token, `401` with
/// an empty body without the right one, else the text.
pub(crate) async fn scrape(server: std::sync::Arc<Server>, headers: &HeaderMap) -> Response {
    let Some(token) = server.metrics_token() else {
        return ApiError::NotFound.into_response();
    };
    if !token.authorizes(headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        )
            .into_response();
    }
    let Some(handle) = install() else {
        return ApiError::Internal("no metrics recorder".into()).into_response();
    };
    let groups = server.commit_groups();
    ::metrics::counter!(COMMIT_GROUPS).absolute(groups.groups);
    ::metrics::counter!(COMMIT_GROUP_REQUESTS).absolute(groups.requests);
    ::metrics::gauge!(WRITER_BUSY).set(groups.busy.as_secs_f64());
    ::metrics::gauge!(WRITER_QUEUE).set(groups.queued as f64);
    match tokio::task::spawn_blocking(move || read_fleet(&server)).await {
        Ok(Ok(g)) => {
            ::metrics::gauge!(HOLDS_OPEN).set(g.holds_open as f64);
            for (since, n) in g.devices {
                ::metrics::gauge!(DEVICES, "since" => since).set(n as f64);
            }
            ::metrics::gauge!(DEVICES_REVOKED).set(g.revoked as f64);
            ::metrics::gauge!(SYNC_AGE_MAX).set(g.sync_age_max_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
            ::metrics::gauge!(OUTBOX_CHANGE_SETS).set(g.outbox.0 as f64);
            ::metrics::gauge!(OUTBOX_RECORDS).set(g.outbox.1 as f64);
            ::metrics::gauge!(DEVICES_BEHIND_FEED).set(g.behind_feed as f64);
            ::metrics::gauge!(FEED_LAG_MAX).set(g.feed_lag_max_ms.map_or(0.0, |ms| ms as f64 / 1000.0));
            for (version, n) in g.versions {
                ::metrics::gauge!(DEVICES_BY_VERSION, "version" => version).set(n as f64);
            }
        }
        Ok(Err(e)) => tracing::warn!(
            code = e.code(),
            "metrics: storage could not be read; gauges are stale"
        ),
        Err(_) => tracing::warn!("metrics: the storage read failed; gauges are stale"),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(last_sync: Option<i64>, revoked: bool) -> Device {
        Device {
            device_id: uuid::Uuid::nil(),
            office: "171003".into(),
            public_key: [0; 32],
            enrolled_at_ms: 0,
            revoked_at_ms: revoked.then_some(1),
            last_seq: 0,
            last_hash: [0; 32],
            last_sync_at_ms: last_sync,
            last_device_clock_ms: None,
            clock_skew_ms: None,
            clock_flagged_at_ms: None,
            refused: None,
            last_request_counter: 0,
            lineage: None,
            clone_refusals: 0,
            clone_refused_at_ms: None,
            adoptions: 0,
            unblock_seq: None,
            report: None,
            feed_sent_cursor: None,
        }
    }

    #[test]
    fn devices_fall_in_the_bucket_of_their_last_sync() {
        let now = 100 * 86_400_000;
        let hour = 3_600_000;
        let devices = [
            device(Some(now), false),
            device(Some(now - hour), false),
            device(Some(now - 2 * hour), false),
            device(Some(now - 3 * 86_400_000), false),
            device(Some(now - 20 * 86_400_000), false),
            device(Some(now - 31 * 86_400_000), false),
            device(None, false),
            device(Some(now - 90 * 86_400_000), true),
        ];
        let g = fleet(&devices, 4, now, &Default::default());
        assert_eq!(
            g.devices,
            [
                ("1h", 2),
                ("1d", 1),
                ("7d", 1),
                ("30d", 1),
                ("older", 1),
                ("never", 1)
            ]
        );
        assert_eq!(g.revoked, 1);
        assert_eq!(g.holds_open, 4);
        assert_eq!(
            g.sync_age_max_ms,
            Some(31 * 86_400_000),
            "the revoked device is not counted"
        );
        assert_eq!(g.versions, vec![("unknown".to_string(), 7)]);
        assert_eq!(g.outbox, (0, 0));
        assert_eq!((g.behind_feed, g.feed_lag_max_ms), (0, None));
    }

    #[test]
    fn the_feed_lag_is_the_oldest_entry_not_sent_to_a_device_that_is_not_revoked() {
        let now = 10 * 3_600_000;
        let ids: Vec<uuid::Uuid> = (1..=3).map(uuid::Uuid::from_u128).collect();
        let mut devices: Vec<Device> = ids
            .iter()
            .map(|&id| Device {
                device_id: id,
                ..device(Some(now), false)
            })
            .collect();
        devices[2].revoked_at_ms = Some(1);
        let waiting = [(ids[0], now - 5_000), (ids[1], now - 60_000), (ids[2], 0)]
            .into_iter()
            .collect();
        let g = fleet(&devices, 0, now, &waiting);
        assert_eq!(g.behind_feed, 2, "the revoked device is not counted");
        assert_eq!(g.feed_lag_max_ms, Some(60_000));
    }

    #[test]
    fn reported_outboxes_are_summed_and_versions_labelled_within_a_bound() {
        let reporting = |version: &str, change_sets, records, revoked| Device {
            report: Some(crvs_schema::wire::TabletReport {
                change_sets_waiting: change_sets,
                records_waiting: records,
                app_version: version.into(),
            }),
            ..device(Some(0), revoked)
        };
        let mut devices = vec![
            reporting("0.1.0", 2, 150, false),
            reporting("0.1.0", 0, 0, false),
            reporting("0.2.0", 1, 7, false),
            reporting("9.9.9", 50, 5000, true),
            device(None, false),
        ];
        let g = fleet(&devices, 0, 1, &Default::default());
        assert_eq!(g.outbox, (3, 157), "revoked devices are not counted");
        assert_eq!(
            g.versions,
            vec![("0.1.0".into(), 2), ("0.2.0".into(), 1), ("unknown".into(), 1)]
        );
        // A fleet claiming many versions gets at most MAX_VERSION_LABELS labels.
        for i in 0..40 {
            devices.push(reporting(&format!("1.{i}.0"), 0, 0, false));
        }
        let g = fleet(&devices, 0, 1, &Default::default());
        assert_eq!(
            g.versions.len(),
            MAX_VERSION_LABELS + 2,
            "labelled, other, unknown"
        );
        assert_eq!(g.versions.iter().map(|v| v.1).sum::<u64>(), 44);
    }

    #[test]
    fn a_token_is_long_visible_ascii_and_compared_whole() {
        assert!(MetricsToken::new("short").is_err());
        assert!(MetricsToken::new(&"a b".repeat(20)).is_err(), "no spaces");
        let text = "0123456789abcdef0123456789abcdef";
        let t = MetricsToken::new(&format!("{text}\n")).expect("32 characters");
        assert!(t.matches(text.as_bytes()));
        assert!(!t.matches(&text.as_bytes()[..31]));
        assert!(!t.matches(format!("{text}x").as_bytes()));
        assert_eq!(format!("{t:?}"), "MetricsToken(..)", "never printed");
        let mut h = HeaderMap::new();
        assert!(!t.authorizes(&h));
        h.insert(header::AUTHORIZATION, format!("Bearer {text}").parse().unwrap());
        assert!(t.authorizes(&h));
        h.insert(header::AUTHORIZATION, format!("bearer  {text} ").parse().unwrap());
        assert!(t.authorizes(&h), "the scheme's case and spaces do not matter");
        h.insert(header::AUTHORIZATION, format!("Basic {text}").parse().unwrap());
        assert!(!t.authorizes(&h));
        h.insert(header::AUTHORIZATION, format!("Bearer {text}").parse().unwrap());
        h.append(header::AUTHORIZATION, format!("Bearer {text}").parse().unwrap());
        assert!(!t.authorizes(&h), "two headers are refused");
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = MetricsToken::from_file(&path).unwrap_err();
        assert!(e.contains("640"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(MetricsToken::from_file(&path).is_ok());
        std::fs::write(&path, "too short\n").unwrap();
        assert!(MetricsToken::from_file(&path).unwrap_err().contains("shorter"));
    }
}
