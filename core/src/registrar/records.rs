//! The record types a [`Registrar`](super::Registrar) hands out, and their JSON.

use crvs_schema::Date;
use crvs_schema::record::RecordView;
use serde_json::{Value as Json, json};

use crate::error::{Error, Result};
use crate::store::RecordRow;

use super::{now_ms, uuid_v7_at};

/// A record's id: a UUIDv7 minted on the tablet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    /// A new UUIDv7 by the device clock (the epoch if the clock reads
    /// before it: never a panic). [`Registrar`](super::Registrar) mints ids with
    /// [`RecordId::at`] after [`checked_now_ms`](super::checked_now_ms).
    pub fn new() -> RecordId {
        RecordId::at(now_ms())
    }

    /// A new UUIDv7 for the instant `unix_ms` (clamped to 0 below the
    /// epoch), with 74 random bits.
    pub fn at(unix_ms: i64) -> RecordId {
        RecordId(*uuid_v7_at(unix_ms).as_bytes())
    }

    /// Parses the hyphenated UUID form.
    pub fn parse(s: &str) -> Result<RecordId> {
        uuid::Uuid::parse_str(s.trim())
            .map(|u| RecordId(*u.as_bytes()))
            .map_err(|_| Error::InvalidInput("a record id must be a UUID".into()))
    }
}

impl Default for RecordId {
    fn default() -> Self {
        RecordId::new()
    }
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl std::str::FromStr for RecordId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        RecordId::parse(s)
    }
}

/// Whether the server has everything the tablet changed in a record.
///
/// * `pending`: the record has changes the server has not acknowledged,
///   either not yet put into a change set or in a change set still waiting
///   for its acknowledgement.
/// * `synced`: every change made on this tablet is acknowledged.
///
/// When the server's own changes (a KIdC, a hold) last arrived is shown
/// beside it, as `server_updated_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Changes wait for the server's acknowledgement.
    Pending,
    /// The server acknowledged every change.
    Synced,
    /// The server set it aside (an operator unblocked this tablet, stuck
    /// behind a change set that carried it): nothing of it is sent; it
    /// must be registered again.
    SetAside,
}

impl SyncState {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Pending => "pending",
            SyncState::Synced => "synced",
            SyncState::SetAside => "set_aside",
        }
    }

    pub(crate) fn of(row: &RecordRow, acked_seq: u64) -> SyncState {
        if row.set_aside_at.is_some() {
            SyncState::SetAside
        } else if row.dirty || row.last_outbox_seq.is_some_and(|s| s > acked_seq) {
            SyncState::Pending
        } else {
            SyncState::Synced
        }
    }
}

/// A record, decrypted.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its id.
    pub id: RecordId,
    /// Its document, decoded.
    pub view: RecordView,
    /// Its sync state.
    pub sync_state: SyncState,
    /// Device clock at creation, ms.
    pub created_at_ms: i64,
    /// Device clock at the last change, ms.
    pub updated_at_ms: i64,
    /// Device clock when the server's changes last arrived, ms.
    pub server_updated_at_ms: Option<i64>,
}

/// A line of the record list: no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSummary {
    /// Its id.
    pub id: RecordId,
    /// Kind of event.
    pub kind: String,
    /// Workflow state.
    pub status: String,
    /// Sync state.
    pub sync_state: SyncState,
    /// The KIdC, once assigned.
    pub kidc: Option<String>,
    /// The server's hold reason code, while the server holds it.
    pub hold: Option<String>,
    /// Device clock at creation, ms.
    pub created_at_ms: i64,
    /// Device clock when the server's changes last arrived, ms.
    pub server_updated_at_ms: Option<i64>,
}

/// Formats device-clock milliseconds as RFC 3339 UTC (`2026-11-28T20:54:37Z`).
pub fn format_utc(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000) / 1000;
    let date = Date::from_unix_days(days).map_or_else(|| "0000-01-01".to_string(), |d| d.to_string());
    format!("{date}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

pub(crate) fn record_to_json(r: &Record) -> Json {
    // A workflow broken by a merge (steps taken concurrently on two
    // tablets) is held by the server: shown so once its hold arrived.
    let status = match r.view.status() {
        Ok(s) => s.as_str(),
        Err(_) if r.view.server.hold.is_some() => "held",
        Err(_) => "invalid",
    };
    let mut out = json!({
        "record_id": r.id.to_string(),
        "kind": r.view.kind.as_str(),
        "office": r.view.office,
        "status": status,
        "sync_state": r.sync_state.as_str(),
        "data": r.view.data,
        "transitions": r.view.transitions,
        "conflicts": r.view.conflicts,
        "server": r.view.server,
        "created_at": format_utc(r.created_at_ms),
        "updated_at": format_utc(r.updated_at_ms),
    });
    if let Some(k) = &r.view.server.kidc {
        out["kidc"] = json!(k.as_str());
    }
    if let Some(h) = &r.view.server.hold {
        out["hold"] = json!(h);
    }
    if let Some(n) = &r.view.server.registration_number {
        out["registration_number"] = json!(n);
    }
    if r.view.server.late {
        out["late"] = json!(true);
    }
    if let Some(t) = r.server_updated_at_ms {
        out["server_updated_at"] = json!(format_utc(t));
    }
    // The values as they stand, and every registered amendment: who (the
    // amendment record's steps), what from which value to which, when, why.
    out["current"] = r.view.current_data();
    out["history"] = json!(r.view.server.amendments);
    if let Some(target) = r.view.data.get("amends") {
        out["amends"] = target.clone();
    }
    out
}

pub(crate) fn summary_to_json(s: &RecordSummary) -> Json {
    let mut out = json!({
        "record_id": s.id.to_string(),
        "kind": s.kind,
        "status": s.status,
        "sync_state": s.sync_state.as_str(),
        "created_at": format_utc(s.created_at_ms),
    });
    if let Some(k) = &s.kidc {
        out["kidc"] = json!(k);
    }
    if let Some(h) = &s.hold {
        out["hold"] = json!(h);
    }
    if let Some(t) = s.server_updated_at_ms {
        out["server_updated_at"] = json!(format_utc(t));
    }
    out
}
