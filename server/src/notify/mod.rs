//! Notifications of births and deaths from health facility systems and
//! courts (`POST /v1/notifications`, API keys of scope `notify`).
//!
//! A notification is validated ([`crvs_schema::notification::validate`],
//! into the typed [`body::Notification`]), given a UUIDv7 from the server's clock, and
//! stored with the commune of its residence village, where it is routed:
//! the tablets of that commune are to receive it on their next sync (later
//! work; the storage query is [`crate::storage::Storage::pending_notifications`]).
//!
//! **Idempotent on the sender's reference.** `(source.system,
//! source.reference)` is unique in the database. A notification sent again
//! under the same pair with the same content (after normalization) is
//! answered with the same id and creates nothing; different content under
//! a used pair is refused as a conflict and changes nothing. Concurrent
//! replays cannot create two: the insert is `ON CONFLICT DO NOTHING` under
//! the single writer, and the loser reads the winner's row in the same
//! transaction. This is also what makes a captured request harmless to
//! replay (see the invariant *no request is accepted twice*).
//!
//! A notification that stays unregistered past a number of days is
//! *overdue* ([`unregistered`], `crvs-server notifications --overdue`).

pub mod body;

use crvs_schema::Date;
use crvs_schema::notification::validate;
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::storage::{ApiKeyRow, StoredNotification};

pub use body::Notification;

/// Days after which an unregistered notification is overdue, unless told
/// otherwise: the 30 days of a timely registration.
pub const DEFAULT_OVERDUE_DAYS: u32 = 30;

/// What became of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Its id.
    pub notification_id: Uuid,
    /// `false`: a replay of one received before; nothing was created.
    pub created: bool,
}

/// Validates and stores a notification sent with `key`. Blocking (takes
/// the writer): call it from `spawn_blocking` in async code.
pub fn receive(server: &Server, key: &ApiKeyRow, body: &[u8]) -> Result<Received, ApiError> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message names positions, never values; but keep to
        // the position alone.
        ApiError::Malformed(format!(
            "the body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let now = server.now_ms();
    let notification =
        validate(&json, Date::today_in_cambodia(now)).map_err(ApiError::InvalidNotification)?;
    let commune = notification
        .residence_village_code()
        .commune()
        .ok_or_else(|| ApiError::Internal("a village code without a commune".into()))?;
    let payload =
        serde_json::to_string(&notification).map_err(|e| ApiError::Internal(format!("payload: {e}")))?;
    let source = notification.source();
    let row = StoredNotification {
        notification_id: crate::new_id(now),
        kind: notification.kind().to_string(),
        source_system: source.system.clone(),
        source_reference: source.reference.clone(),
        commune: commune.as_str().to_string(),
        payload,
        api_key_id: key.id,
        received_at_ms: now,
        registered_record_id: None,
        registered_at_ms: None,
    };
    let mut tx = server.storage().begin()?;
    if tx.insert_notification(&row)? {
        tx.commit()?;
        tracing::info!(
            notification_id = %row.notification_id,
            kind = row.kind,
            commune = row.commune,
            api_key_id = %key.id,
            "notification received"
        );
        return Ok(Received {
            notification_id: row.notification_id,
            created: true,
        });
    }
    let existing = tx
        .notification_by_source(&row.source_system, &row.source_reference)?
        .ok_or_else(|| ApiError::Internal("a conflicting notification vanished".into()))?;
    // Nothing was written: dropping the transaction rolls it back.
    drop(tx);
    if existing.kind == row.kind && existing.payload == row.payload {
        tracing::info!(notification_id = %existing.notification_id, "notification replayed");
        Ok(Received {
            notification_id: existing.notification_id,
            created: false,
        })
    } else {
        Err(ApiError::NotificationConflict)
    }
}

/// A notification as operators see it: ids and codes, no names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotificationSummary {
    /// Its id.
    pub notification_id: String,
    /// `birth` or `death`.
    pub kind: String,
    /// The commune of residence (6 digits).
    pub commune: String,
    /// When it was received, ms since the epoch.
    pub received_at: i64,
    /// The sending system.
    pub source_system: String,
    /// The sender's reference.
    pub reference: String,
}

impl From<StoredNotification> for NotificationSummary {
    fn from(n: StoredNotification) -> Self {
        NotificationSummary {
            notification_id: n.notification_id.to_string(),
            kind: n.kind,
            commune: n.commune,
            received_at: n.received_at_ms,
            source_system: n.source_system,
            reference: n.source_reference,
        }
    }
}

/// A notification and the registration that answered it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RegisteredNotification {
    /// Its id.
    pub notification_id: String,
    /// `birth` or `death`.
    pub kind: String,
    /// The commune of residence (6 digits).
    pub commune: String,
    /// When it was received, ms since the epoch.
    pub received_at: i64,
    /// The record that registered it.
    pub registered_record_id: String,
    /// When the server registered that record, ms since the epoch.
    pub registered_at: i64,
    /// The time from the notification to the registration, in hours.
    pub hours_to_registration: f64,
}

/// The notifications registered in the last `days` days, by registration
/// time, each with the time it took from the notification to the
/// registration; and the median of those times, in hours.
pub fn registered(
    server: &Server,
    days: u32,
) -> Result<(Vec<RegisteredNotification>, Option<f64>), ApiError> {
    let since = server
        .now_ms()
        .saturating_sub(i64::from(days).saturating_mul(86_400_000));
    let list: Vec<RegisteredNotification> = server
        .storage()
        .registered_notifications(since)?
        .into_iter()
        .filter_map(|n| {
            let (record, at) = (n.registered_record_id?, n.registered_at_ms?);
            Some(RegisteredNotification {
                notification_id: n.notification_id.to_string(),
                kind: n.kind,
                commune: n.commune,
                received_at: n.received_at_ms,
                registered_record_id: record.to_string(),
                registered_at: at,
                hours_to_registration: ((at - n.received_at_ms) as f64 / 3_600_000.0 * 100.0).round() / 100.0,
            })
        })
        .collect();
    let mut hours: Vec<f64> = list.iter().map(|n| n.hours_to_registration).collect();
    hours.sort_by(f64::total_cmp);
    let median = (!hours.is_empty()).then(|| hours[hours.len() / 2]);
    Ok((list, median))
}

/// The notifications not yet registered, oldest first; with
/// `overdue_days`, only those received more than that many days ago.
pub fn unregistered(
    server: &Server,
    overdue_days: Option<u32>,
) -> Result<Vec<NotificationSummary>, ApiError> {
    let before = overdue_days.map(|days| {
        server
            .now_ms()
            .saturating_sub(i64::from(days).saturating_mul(86_400_000))
    });
    Ok(server
        .storage()
        .unregistered_notifications(before)?
        .into_iter()
        .map(NotificationSummary::from)
        .collect())
}
