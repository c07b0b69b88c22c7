//! Enrolment and fleet operations: one-time tokens, enrolment of a tablet,
//! revocation, the device list.
//!
//! A token ([`crvs_schema::enrol::EnrolmentToken`]) carries an 80-bit
//! secret and the fingerprint of this server's signing key. It is shown
//! once to the operator; the server stores only the token's lookup id and
//! MAC key (two hashes of the secret). The secret never crosses the
//! network.
//!
//! Enrolment checks everything it can *without* the writer: the version,
//! the key (not weak), the token (by lookup id, through the read-only
//! connection), the request's MAC, the office, the expiry. Only a request
//! that proves it holds the token takes the writer, and consumes the token
//! there (`UPDATE ... WHERE used_at IS NULL`), so two tablets racing with
//! one token get exactly one device between them. The same tablet (the
//! same public key) may enrol again with its token and gets the same
//! device and a freshly signed answer: an answer lost on the way, or
//! spoiled by a machine in the middle, strands nobody. The answer is
//! signed with the server key over the request's public key and nonce.

use crvs_schema::enrol::{self, EnrolmentToken};
use crvs_schema::gazetteer::{GazetteerCode, Level};
use crvs_schema::wire::{EnrollRequest, EnrollResponse, FORMAT_VERSION};
use ed25519_dalek::VerifyingKey;
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::storage::{Device, NewDevice, Storage, TokenRow};

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
    /// The fingerprint of the server key the token vouches for, hex (also
    /// inside the token): operators can compare it with `crvs-server key`.
    pub server_key_fingerprint: String,
}

/// Makes a one-time enrolment token bound to a commune (6-digit gazetteer
/// code), valid for `ttl_ms`.
pub fn create_token(server: &Server, commune: &str, ttl_ms: i64) -> Result<NewToken, ApiError> {
    let code = GazetteerCode::parse_level(commune.trim(), Level::Commune)
        .map_err(|e| ApiError::Invalid(format!("--commune must be a 6-digit commune code: {e}")))?;
    if ttl_ms <= 0 {
        return Err(ApiError::Invalid("the token lifetime must be positive".into()));
    }
    let server_key = server.signing_key().verifying_key();
    // `rand::rng()` is a CSPRNG seeded from the operating system.
    let token = EnrolmentToken::generate(&server_key, &mut rand::rng());
    let now = server.now_ms();
    let row = TokenRow {
        office: code.as_str().to_string(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(ttl_ms),
        used_at_ms: None,
        mac_key: Some(token.mac_key()),
        used_by: None,
    };
    let mut tx = server.storage().begin()?;
    tx.insert_token(&hex::encode(token.lookup_id()), &row)?;
    tx.commit()?;
    tracing::info!(office = %row.office, "enrolment token created");
    Ok(NewToken {
        token: token.to_text(),
        commune: row.office,
        expires_at: row.expires_at_ms,
        server_key_fingerprint: hex::encode(enrol::key_fingerprint(&server_key)),
    })
}

/// The token as a QR code, in a greyscale PNG: 8 pixels per module and
/// the standard quiet zone of four modules, error correction level M (a
/// printout survives some dirt). It holds only the token's text.
pub fn token_qr_png(token: &str) -> Result<Vec<u8>, ApiError> {
    const SCALE: usize = 8;
    const QUIET: usize = 4;
    let code = qrcode::QrCode::with_error_correction_level(token.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| ApiError::Internal(format!("the QR code could not be made: {e}")))?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, c) in colors.iter().enumerate() {
        if *c == qrcode::Color::Dark {
            let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let mut png_bytes = Vec::new();
    {
        let side = u32::try_from(side).map_err(|_| ApiError::Internal("QR code too large".into()))?;
        let mut encoder = png::Encoder::new(&mut png_bytes, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| ApiError::Internal(format!("the PNG could not be written: {e}")))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| ApiError::Internal(format!("the PNG could not be written: {e}")))?;
    }
    Ok(png_bytes)
}

/// Writes the token's QR code to `path`, readable by its owner only (it
/// enrols a tablet until it is used or expires).
pub fn write_token_qr(token: &str, path: &std::path::Path) -> Result<(), ApiError> {
    let png = token_qr_png(token)?;
    let _ = std::fs::remove_file(path);
    crate::private_file(path)
        .and_then(|()| std::fs::write(path, png))
        .map_err(|e| ApiError::Invalid(format!("cannot write the QR code to {}: {e}", path.display())))
}

fn hex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], ApiError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| ApiError::Invalid(format!("{what} must be {} hex digits", 2 * N)))?;
    Ok(out)
}

/// Enrols a tablet: checks the token and the request's proof of it, then
/// consumes the token and stores the device; answers signed.
pub fn enroll(server: &Server, req: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
    if req.version < FORMAT_VERSION {
        return Err(ApiError::UpgradeRequired);
    }
    if req.version != FORMAT_VERSION {
        return Err(ApiError::Invalid(format!(
            "unsupported enrolment version {}; this server speaks {FORMAT_VERSION}",
            req.version
        )));
    }
    let key: [u8; 32] = hex_array(&req.public_key, "public_key")?;
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
    let token_id: [u8; 32] = hex_array(&req.token_id, "token_id")?;
    let nonce: [u8; 16] = hex_array(&req.nonce, "nonce")?;
    let mac: [u8; 32] = hex_array(&req.mac, "mac")?;
    let office = req.office.as_deref().map(str::trim);
    let token_hash = hex::encode(token_id);
    let now = server.now_ms();

    // Without the writer: the token, and the proof that the sender holds it.
    let row = server
        .storage()
        .token(&token_hash)?
        .ok_or(ApiError::UnknownToken)?;
    let Some(mac_key) = row.mac_key else {
        return Err(ApiError::Invalid(
            "this enrolment token was made by an older server version; create a new one".into(),
        ));
    };
    if !enrol::verify_request_mac(&mac_key, &key, &nonce, office.unwrap_or(""), &mac) {
        // Someone who saw the token id on the network, but not the token.
        return Err(ApiError::UnknownToken);
    }
    if let Some(office) = office
        && office != row.office
    {
        // Checked before the token is used: it stays valid for its office.
        return Err(ApiError::WrongOffice {
            token_office: row.office,
            store_office: office.to_string(),
        });
    }
    let device_id = match row.used_by {
        // The same tablet again: the same device, nothing written.
        Some((device_id, used_key)) if used_key == key => device_id,
        Some(_) => return Err(ApiError::TokenUsed),
        None => {
            if now >= row.expires_at_ms {
                return Err(ApiError::TokenExpired);
            }
            let device_id = Uuid::now_v7();
            let mut tx = server.storage().begin()?;
            if !tx.use_token(&token_hash, device_id, &key, now)? {
                // Another request consumed it meanwhile; if it was this
                // tablet's, it gets that device.
                drop(tx);
                return match server.storage().token(&token_hash)?.and_then(|r| r.used_by) {
                    Some((id, used_key)) if used_key == key => answer(server, &key, &nonce, id, row.office),
                    _ => Err(ApiError::TokenUsed),
                };
            }
            tx.insert_device(&NewDevice {
                device_id,
                office: row.office.clone(),
                public_key: key,
                enrolled_at_ms: now,
            })?;
            // The office's records, for this tablet's first sync.
            let records = tx.seed_office_feed(device_id, &row.office, now)?;
            tracing::info!(device = %device_id, records, "the office's records are in the new device's feed");
            // Outside the database first: a restore from an older backup
            // puts the device back (see `crate::ledger`).
            server.ledger().record_enrolment(&crate::ledger::LedgerDevice {
                device_id,
                office: row.office.clone(),
                public_key: hex::encode(key),
                enrolled_at_ms: now,
                token_hash: token_hash.clone(),
                revoked_at_ms: None,
            })?;
            tx.commit()?;
            tracing::info!(device = %device_id, office = %row.office, "device enrolled");
            device_id
        }
    };
    answer(server, &key, &nonce, device_id, row.office)
}

fn answer(
    server: &Server,
    public_key: &[u8; 32],
    nonce: &[u8; 16],
    device_id: Uuid,
    office: String,
) -> Result<EnrollResponse, ApiError> {
    let mut response = EnrollResponse {
        device_id: device_id.to_string(),
        office,
        server_public_key: hex::encode(server.signing_key().verifying_key().to_bytes()),
        signature: String::new(),
        directory: None,
    };
    let directory = crate::staff::directory(server.storage(), &response.office)?;
    response.directory = Some(hex::encode(
        crvs_schema::wire::seal_directory(&directory, server.signing_key())
            .map_err(|e| ApiError::Internal(format!("sealing the office directory failed: {e}")))?,
    ));
    response.sign(
        server.signing_key(),
        &hex::encode(public_key),
        &hex::encode(nonce),
    );
    Ok(response)
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
    // Outside the database first: a restore never brings it back.
    server
        .ledger()
        .record_revocation(id, device.revoked_at_ms.unwrap_or_else(|| server.now_ms()))?;
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
    /// Set when requests came from another copy of the device's store and
    /// were refused (`{refusals, last_at}`): someone copied the tablet's
    /// store, or put an old copy back while the original lives on. Check
    /// the device, revoke it and enrol the tablet you keep again.
    pub clone: Option<CloneSeen>,
    /// How many times it adopted the server's chain position because it
    /// had lost its own (a lost commit, an old copy of its store put
    /// back). Each time, its unacknowledged records were sent again.
    pub adoptions: u64,
    /// What it reported with its last sync (`{change_sets_waiting,
    /// records_waiting, app_version}`); null for a tablet older than sync
    /// version 6, or one that has not synced.
    pub reported: Option<crvs_schema::wire::TabletReport>,
}

/// Requests refused because they came from a copy of the device's store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CloneSeen {
    /// How many.
    pub refusals: u64,
    /// The last one, ms since the epoch.
    pub last_at: i64,
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
            clone: d.clone_refused_at_ms.map(|last_at| CloneSeen {
                refusals: d.clone_refusals,
                last_at,
            }),
            adoptions: d.adoptions,
            reported: d.report.clone(),
        }
    }
}

/// Every device.
pub fn devices(storage: &dyn Storage) -> Result<Vec<DeviceSummary>, ApiError> {
    Ok(storage.list_devices()?.iter().map(DeviceSummary::from).collect())
}

/// A held record, as `crvs-server holds` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HoldView {
    /// The record.
    pub record_id: String,
    /// Its office (commune).
    pub office: String,
    /// The hold's reason code (`invalid_on_receipt`, `invalid_workflow`,
    /// `kidc_conflict`).
    pub reason: String,
    /// When it was held, ms since the epoch.
    pub since: i64,
}

/// Every record held and not released, oldest first.
pub fn holds(storage: &dyn Storage) -> Result<Vec<HoldView>, ApiError> {
    Ok(storage
        .holds()?
        .into_iter()
        .map(|h| HoldView {
            record_id: h.record_id.to_string(),
            office: h.office,
            reason: h.reason,
            since: h.since,
        })
        .collect())
}

/// What `crvs-server release` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReleaseView {
    /// The record.
    pub record_id: String,
    /// The hold was lifted.
    pub released: bool,
    /// The reason it was held.
    pub hold_reason: String,
    /// Its status now.
    pub status: String,
    /// The KIdC the release issued, if it issued one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kidc: Option<String>,
    /// Why it stays held (rules and field names, no values).
    pub problems: Vec<String>,
}

/// An operator's id: 1 to 64 letters, digits and `._@-`.
pub fn check_operator(by: &str) -> Result<(), ApiError> {
    let ok = !by.is_empty()
        && by.len() <= 64
        && by
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(
            "--by must be the operator's id: 1 to 64 letters, digits and . _ @ -".into(),
        ))
    }
}

/// An operator's reason: 1 to 1000 characters, no control characters.
pub fn check_reason(reason: &str) -> Result<(), ApiError> {
    let trimmed = reason.trim();
    if trimmed.is_empty() || reason.chars().count() > 1000 || reason.chars().any(char::is_control) {
        return Err(ApiError::Invalid(
            "--reason must say why, in 1 to 1000 characters on one line".into(),
        ));
    }
    Ok(())
}

/// Re-checks a held record and releases it if it now passes (see
/// [`crate::ingest::release_hold`]). Audited.
pub fn release(server: &Server, record_id: &str, by: &str, reason: &str) -> Result<ReleaseView, ApiError> {
    check_operator(by)?;
    check_reason(reason)?;
    let id = Uuid::parse_str(record_id.trim())
        .map_err(|_| ApiError::Invalid("RECORD_ID must be a record id (a UUID)".into()))?;
    let r = crate::ingest::release_hold(server, id, by, reason.trim())?
        .ok_or_else(|| ApiError::Invalid(format!("record {id} is not held")))?;
    Ok(ReleaseView {
        record_id: id.to_string(),
        released: r.released,
        hold_reason: r.hold_reason,
        status: r.status.as_str().to_string(),
        kidc: r.kidc.map(|k| k.as_str().to_string()),
        problems: r.problems,
    })
}

/// What `crvs-server unblock` armed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnblockView {
    /// The device.
    pub device_id: String,
    /// The change set that will be set aside.
    pub seq: u64,
    /// Why it was refused.
    pub code: String,
}

/// Unblocks a device stuck behind a refused change set: that change set
/// will be set aside when the device next sends it (kept verbatim as
/// evidence, nothing applied, its records set aside for good: they must be
/// registered again), and the device's chain moves past it. Audited.
pub fn unblock(server: &Server, device_id: &str, by: &str, reason: &str) -> Result<UnblockView, ApiError> {
    check_operator(by)?;
    check_reason(reason)?;
    let id = Uuid::parse_str(device_id.trim())
        .map_err(|_| ApiError::Invalid("DEVICE_ID must be a device id (a UUID)".into()))?;
    let now = server.now_ms();
    let mut tx = server.storage().begin()?;
    let device = tx.device(id)?.ok_or(ApiError::NoSuchDevice(id.to_string()))?;
    let Some(refused) = device.refused else {
        return Err(ApiError::Invalid(format!("device {id} is not blocked")));
    };
    tx.request_unblock(&crate::storage::UnblockAudit {
        device_id: id,
        seq: refused.seq,
        code: &refused.code,
        by,
        why: reason.trim(),
        at_ms: now,
    })?;
    tx.commit()?;
    tracing::warn!(device = %id, seq = refused.seq, code = refused.code.as_str(), "device unblocked: its refused change set will be set aside");
    Ok(UnblockView {
        device_id: id.to_string(),
        seq: refused.seq,
        code: refused.code,
    })
}
