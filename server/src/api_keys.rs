//! API keys of the institutions' systems (health facility systems, courts).
//!
//! A key is 32 random bytes from the operating system's CSPRNG, printed
//! once by `crvs-server api-key` as `crvs_ak_` and 64 hex digits. The
//! server keeps only the SHA-256 of the 32 bytes: a key that strong cannot
//! be guessed from its hash, so no slow hash is needed, and the key is
//! found by its hash (no comparison of secrets in the code at all). A
//! client sends it as `Authorization: Bearer KEY`.
//!
//! Every way a key can fail (missing, malformed, unknown, revoked) is the
//! same `401 unauthenticated` with `WWW-Authenticate: Bearer`, so an
//! answer tells nobody which part failed; a valid key without the
//! endpoint's scope is `403 forbidden`. Lookups go through the read-only
//! connection: an unauthenticated request never waits for the writer.
//!
//! Each key has one [`Scope`]. Keys are never deleted: `api-key revoke`
//! marks one revoked, and it is refused from its next request on, while
//! the notifications it sent keep naming it. A revocation is recorded in
//! the ledger ([`crate::ledger`]) before the database commits it, so a
//! restore from an older backup does not make the key work again.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::Server;
use crate::error::ApiError;
use crate::storage::ApiKeyRow;

/// What every key starts with (so that secret scanners and people can
/// recognise one).
pub const KEY_PREFIX: &str = "crvs_ak_";

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `notify`: send birth and death notifications
    /// (`POST /v1/notifications`).
    Notify,
    /// `verify`: verify identities. Reserved for the verification API of
    /// a later issue: it grants nothing yet.
    Verify,
}

impl Scope {
    /// Every scope.
    pub const ALL: &'static [Scope] = &[Scope::Notify, Scope::Verify];

    /// Its name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Notify => "notify",
            Scope::Verify => "verify",
        }
    }

    /// The scope named `s`, if any.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

/// A freshly made key: the only time the key itself is shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewApiKey {
    /// The key's id (to revoke it).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its scope.
    pub scope: String,
    /// The key: give it to the system once. It is not stored.
    pub key: String,
    /// When it was made, ms since the epoch.
    pub created_at: i64,
}

/// A key as operators see it (never the key or its hash).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiKeyInfo {
    /// The key's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its scope.
    pub scope: String,
    /// When it was made, ms since the epoch.
    pub created_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

impl From<ApiKeyRow> for ApiKeyInfo {
    fn from(r: ApiKeyRow) -> Self {
        ApiKeyInfo {
            id: r.id.to_string(),
            name: r.name,
            scope: r.scope,
            created_at: r.created_at_ms,
            revoked_at: r.revoked_at_ms,
        }
    }
}

/// The stored hash of a key's 32 bytes, hex.
pub fn key_hash(key: &[u8; 32]) -> String {
    hex::encode(Sha256::digest(key))
}

/// The 32 bytes of a key's text, if it is one.
pub fn parse_key(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix(KEY_PREFIX)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Makes a key named `name` with `scope`, stores its hash, and returns it.
pub fn create(server: &Server, name: &str, scope: &str) -> Result<NewApiKey, ApiError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name
            .chars()
            .any(|c| c.is_control() || crvs_schema::text::is_invisible(c))
    {
        return Err(ApiError::Invalid(format!(
            "--name must be 1 to {MAX_NAME_CHARS} visible characters"
        )));
    }
    let Some(scope) = Scope::parse(scope.trim()) else {
        let all: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::Invalid(format!(
            "--scope must be one of {}",
            all.join(", ")
        )));
    };
    let mut key = [0u8; 32];
    // `rand::rng()` is a CSPRNG seeded from the operating system.
    rand::Rng::fill_bytes(&mut rand::rng(), &mut key);
    let now = server.now_ms();
    let row = ApiKeyRow {
        id: crate::new_id(now),
        name: name.to_string(),
        scope: scope.as_str().to_string(),
        key_hash: key_hash(&key),
        created_at_ms: now,
        revoked_at_ms: None,
    };
    let mut tx = server.storage().begin()?;
    tx.insert_api_key(&row)?;
    tx.commit()?;
    tracing::info!(api_key_id = %row.id, scope = scope.as_str(), "API key created");
    Ok(NewApiKey {
        id: row.id.to_string(),
        name: row.name,
        scope: row.scope,
        key: format!("{KEY_PREFIX}{}", hex::encode(key)),
        created_at: now,
    })
}

/// Revokes the key `id`: it is refused from its next request on.
/// Revoking twice keeps the first time.
pub fn revoke(server: &Server, id: &str) -> Result<ApiKeyInfo, ApiError> {
    let uuid =
        Uuid::parse_str(id.trim()).map_err(|_| ApiError::Invalid("--id must be an API key id".into()))?;
    let now = server.now_ms();
    let mut tx = server.storage().begin()?;
    if !tx.revoke_api_key(uuid, now)? {
        return Err(ApiError::NoSuchApiKey(uuid.to_string()));
    }
    // Outside the database first: a restore never makes the key work
    // again. (A key revoked already is in the ledger already, with its
    // first time: every start imports the database's revocations.)
    server.ledger().record_api_key_revocations(&[(uuid, now)])?;
    tx.commit()?;
    tracing::info!(api_key_id = %uuid, "API key revoked");
    server
        .storage()
        .api_keys()?
        .into_iter()
        .find(|k| k.id == uuid)
        .map(ApiKeyInfo::from)
        .ok_or_else(|| ApiError::Internal("a revoked key vanished".into()))
}

/// Every key, revoked ones included, oldest first.
pub fn list(server: &Server) -> Result<Vec<ApiKeyInfo>, ApiError> {
    Ok(server
        .storage()
        .api_keys()?
        .into_iter()
        .map(ApiKeyInfo::from)
        .collect())
}

/// The key of an `Authorization: Bearer KEY` header; anything else (no
/// header, two, another scheme, not a key) is [`ApiError::Unauthenticated`].
pub fn bearer(headers: &HeaderMap) -> Result<[u8; 32], ApiError> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(ApiError::Unauthenticated);
    };
    let text = value.to_str().map_err(|_| ApiError::Unauthenticated)?.trim();
    let (scheme, credentials) = text.split_once(' ').ok_or(ApiError::Unauthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthenticated);
    }
    parse_key(credentials.trim()).ok_or(ApiError::Unauthenticated)
}

/// The stored key whose hash is that of `key`, if it is not revoked and
/// has `scope`. Read-only.
pub fn authenticate(server: &Server, key: &[u8; 32], scope: Scope) -> Result<ApiKeyRow, ApiError> {
    let row = server
        .storage()
        .api_key(&key_hash(key))?
        .filter(|k| k.revoked_at_ms.is_none())
        .ok_or(ApiError::Unauthenticated)?;
    if row.scope != scope.as_str() {
        return Err(ApiError::MissingScope(scope.as_str()));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_parses_only_with_its_prefix_and_64_hex_digits() {
        let key = [7u8; 32];
        let text = format!("{KEY_PREFIX}{}", hex::encode(key));
        assert_eq!(parse_key(&text), Some(key));
        assert_eq!(parse_key(&hex::encode(key)), None);
        assert_eq!(parse_key(&text[..text.len() - 1]), None);
        assert_eq!(parse_key(&format!("{text}0")), None);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_anything_else_is_unauthenticated() {
        let key = [9u8; 32];
        let text = format!("{KEY_PREFIX}{}", hex::encode(key));
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Err(ApiError::Unauthenticated)));
        h.insert("authorization", format!("bearer {text}").parse().expect("header"));
        assert_eq!(bearer(&h).ok(), Some(key));
        h.insert("authorization", format!("Basic {text}").parse().expect("header"));
        assert!(matches!(bearer(&h), Err(ApiError::Unauthenticated)));
        h.insert("authorization", format!("Bearer {text}").parse().expect("header"));
        h.append("authorization", format!("Bearer {text}").parse().expect("header"));
        assert!(matches!(bearer(&h), Err(ApiError::Unauthenticated)));
    }
}
