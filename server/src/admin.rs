//! Enrolment and fleet operations: one-time tokens, enrolment of a tablet,
//! revocation, the device list.
//!
//! A token is 128 random bits shown once to the operator; only its SHA-256
//! is stored. Enrolment consumes it inside the single write transaction
//! (`UPDATE ... WHERE used_at IS NULL`), so two tablets racing with one
//! token get exactly one device between them.

use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::wire::{EnrollRequest, EnrollResponse, FORMAT_VERSION};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::storage::{Device, NewDevice, TokenRow};

/// How long a token stays valid unless told otherwise.
pub const DEFAULT_TOKEN_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// A freshly made enrolment token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewToken {
    /// The token: give it to the tablet once. It is not stored.
    pub token: String,
    /// The commune (office) the enrolled tablet will serve.
    pub commune: String,
    /// When it expires, ms since the epoch.
    pub expires_at: i64,
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Makes a one-time enrolment token bound to a commune (6-digit gazetteer
/// code), valid for `ttl_ms`.
pub fn create_token(server: &Server, commune: &str, ttl_ms: i64) -> Result<NewToken, ApiError> {
    let code = GazetteerCode::parse_level(commune.trim(), Level::Commune)
        .map_err(|e| ApiError::Invalid(format!("--commune must be a 6-digit commune code: {e}")))?;
    if ttl_ms <= 0 {
        return Err(ApiError::Invalid("the token lifetime must be positive".into()));
    }
    let mut raw = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut raw);
    let token = hex::encode(raw);
    let now = server.now_ms();
    let row = TokenRow {
        office: code.as_str().to_string(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl_ms),
        used_at_ms: None,
    };
    let mut tx = server.storage().begin()?;
    tx.insert_token(&token_hash(&token), &row)?;
    tx.commit()?;
    tracing::info!(office = %row.office, "enrolment token created");
    Ok(NewToken {
        token,
        commune: row.office,
        expires_at: row.expires_at_ms,
    })
}

/// Enrols a tablet: checks and consumes the token, stores the device.
pub fn enroll(server: &Server, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
    if req.version != FORMAT_VERSION {
        return Err(ApiError::Invalid(format!(
            "unsupported enrolment version {}; this server speaks {FORMAT_VERSION}",
            req.version
        )));
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(req.public_key.trim(), &mut key)
        .map_err(|_| ApiError::Invalid("public_key must be 64 hex digits (an ed25519 public key)".into()))?;
    let parsed = VerifyingKey::from_bytes(&key)
        .map_err(|_| ApiError::Invalid("public_key is not a valid ed25519 public key".into()))?;
    if parsed.is_weak() {
        // A small-order key (all zeros among them) verifies signatures
        // that anyone can make. Refused before the token is looked at, so
        // the token stays good.
        return Err(ApiError::Invalid(
            "public_key is a weak ed25519 key (small order); generate a new key pair".into(),
        ));
    }
    let hash = token_hash(&req.token);
    let now = server.now_ms();
    let mut tx = server.storage().begin()?;
    let row = tx.token(&hash)?.ok_or(ApiError::UnknownToken)?;
    if row.used_at_ms.is_some() {
        return Err(ApiError::TokenUsed);
    }
    if now >= row.expires_at_ms {
        return Err(ApiError::TokenExpired);
    }
    if let Some(office) = &req.office
        && office.trim() != row.office
    {
        // Checked before the token is used: it stays valid for its office.
        return Err(ApiError::WrongOffice {
            token_office: row.office,
            store_office: office.trim().to_string(),
        });
    }
    let device_id = Uuid::now_v7();
    if !tx.use_token(&hash, device_id, now)? {
        return Err(ApiError::TokenUsed);
    }
    tx.insert_device(&NewDevice {
        device_id,
        office: row.office.clone(),
        public_key: key,
        enrolled_at_ms: now,
    })?;
    tx.commit()?;
    tracing::info!(device = %device_id, office = %row.office, "device enrolled");
    Ok(EnrollResponse {
        device_id: device_id.to_string(),
        office: row.office,
        server_public_key: hex::encode(server.signing_key().verifying_key().to_bytes()),
    })
}

/// Revokes a device: refused from its next request on.
pub fn revoke(server: &Server, device_id: &str) -> Result<Device, ApiError> {
    let id = Uuid::parse_str(device_id.trim())
        .map_err(|_| ApiError::Invalid("DEVICE_ID must be a device id (a UUID)".into()))?;
    let mut tx = server.storage().begin()?;
    if !tx.revoke_device(id, server.now_ms())? {
        return Err(ApiError::NoSuchDevice(id.to_string()));
    }
    let device = tx.device(id)?.ok_or(ApiError::NoSuchDevice(id.to_string()))?;
    tx.commit()?;
    tracing::info!(device = %id, "device revoked");
    Ok(device)
}

/// A device as the operator command `devices` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceSummary {
    /// The device id.
    pub device_id: String,
    /// Its commune (office).
    pub commune: String,
    /// Revoked or not.
    pub revoked: bool,
    /// When it was revoked, ms since the epoch.
    pub revoked_at: Option<i64>,
    /// When it enrolled.
    pub enrolled_at: i64,
    /// Server time of its last sync request, if any.
    pub last_sync: Option<i64>,
    /// Its last applied change set.
    pub last_seq: u64,
    /// Device clock minus server clock at its last sync.
    pub clock_skew_ms: Option<i64>,
    /// Its clock was off by more than a day at its last sync.
    pub clock_flagged: bool,
    /// Set when a change set was refused for a reason a resend cannot fix
    /// (`{seq, code, at}`): the device cannot sync past it. Cleared when it
    /// syncs past it.
    pub blocked: Option<Blocked>,
}

/// A device stuck behind a refused change set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Blocked {
    /// The refused change set's sequence number.
    pub seq: u64,
    /// The refusal code (`out_of_scope`, `server_owned_field`, ...).
    pub code: String,
    /// When, ms since the epoch.
    pub at: i64,
}

impl From<&Device> for DeviceSummary {
    fn from(d: &Device) -> Self {
        DeviceSummary {
            device_id: d.device_id.to_string(),
            commune: d.office.clone(),
            revoked: d.revoked_at_ms.is_some(),
            revoked_at: d.revoked_at_ms,
            enrolled_at: d.enrolled_at_ms,
            last_sync: d.last_sync_at_ms,
            last_seq: d.last_seq,
            clock_skew_ms: d.clock_skew_ms,
            clock_flagged: d
                .clock_skew_ms
                .is_some_and(|s| s.unsigned_abs() > crate::ingest::CLOCK_TOLERANCE_MS),
            blocked: d.refused.as_ref().map(|r| Blocked {
                seq: r.seq,
                code: r.code.clone(),
                at: r.at_ms,
            }),
        }
    }
}

/// Every device.
pub fn devices(server: &Server) -> Result<Vec<DeviceSummary>, ApiError> {
    Ok(server
        .storage()
        .list_devices()?
        .iter()
        .map(DeviceSummary::from)
        .collect())
}
