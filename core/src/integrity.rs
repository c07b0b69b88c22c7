//! Tamper evidence for the store's plaintext columns.
//!
//! The sealed columns are authenticated by their encryption, each bound to
//! its row. The plaintext ones decide what is sent and what a registrar
//! sees (`status`, `dirty`, `acked_at`, the chain's bookkeeping, the pinned
//! server key in `meta`), so they are authenticated too: every row carries
//! `mac`, an HMAC-SHA256 over the table's name and every column of the row,
//! under a key derived from the store's data key (see
//! `migrations/003_integrity.sql` for the triggers that keep it).
//!
//! * [`register`] adds the SQL functions `crvs_row_mac` (keyed) and
//!   `crvs_xor` to a connection that unlocked the store. Without them, any
//!   write to the store fails; with a stand-in, it writes a `mac` that does
//!   not verify.
//! * The triggers refuse to update or delete a row whose `mac` is wrong
//!   (`crvs_tampered`), so none of our writes re-authenticates a row that
//!   someone else changed.
//! * `integrity.sum`, the XOR of every `mac`, authenticated by
//!   `integrity.tag`, shows a row deleted or put back from an older copy.
//! * [`check_schema`] compares the schema with the one the migrations make,
//!   before the key is registered: no trigger or view slipped into the file
//!   can use it.
//! * [`tampered_rows`] recomputes everything and names the rows that fail.
//!
//! What it cannot see: the whole file put back to an older copy (every row
//! and the sum agree with each other). That is a lost commit, and the
//! server, which holds the truth about what it applied, sorts it out (the
//! tablet adopts its chain position).

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, params};
use zeroize::Zeroizing;

use crate::crypto::DataKey;
use crate::error::{Error, Result};

/// Marks the error a trigger raises on a row whose `mac` is wrong.
pub const TAMPERED_MARK: &str = "crvs_tampered";

/// Each table's primary key and its columns, in the order the triggers
/// authenticate them.
const TABLES: &[(&str, &str, &str)] = &[
    ("meta", "key", "key, value"),
    (
        "records",
        "id",
        "id, kind, status, created_at, updated_at, doc_sealed, kidc_sealed, outboxed_heads, dirty, \
         last_outbox_seq, server_updated_at, set_aside_at",
    ),
    (
        "outbox",
        "seq",
        "seq, hash, body_sealed, record_count, byte_len, created_at, acked_at",
    ),
    ("kidc_evidence", "record_id", "record_id, proof_sealed"),
    ("chain_adoptions", "seq", "seq, hash, adopted_at"),
];

/// The first store version with row MACs.
pub const SINCE_VERSION: usize = 3;

/// Registers `crvs_row_mac` under a key derived from `key`, and
/// `crvs_xor`, on `conn`.
pub fn register(conn: &Connection, key: &DataKey) -> Result<()> {
    register_with(conn, key.row_mac_key())
}

fn register_with(conn: &Connection, mac_key: Zeroizing<[u8; 32]>) -> Result<()> {
    // INNOCUOUS: usable from the triggers even with `trusted_schema=OFF`.
    // That is safe because `check_schema` runs before this: the only
    // triggers are ours.
    let flags =
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("crvs_row_mac", -1, flags, move |ctx| {
        Ok(row_mac(&mac_key, ctx)?.to_vec())
    })?;
    set_repairing(conn, false)?;
    conn.create_scalar_function("crvs_xor", -1, flags, |ctx| {
        let mut out = [0u8; 32];
        for i in 0..ctx.len() {
            match ctx.get_raw(i) {
                ValueRef::Null => {}
                ValueRef::Blob(b) if b.len() == 32 => out.iter_mut().zip(b).for_each(|(o, x)| *o ^= x),
                _ => {
                    return Err(rusqlite::Error::UserFunctionError(
                        "crvs_xor takes 32-byte blobs".into(),
                    ));
                }
            }
        }
        Ok(out.to_vec())
    })?;
    Ok(())
}

/// Turns the triggers' refusal to write over a row that fails its MAC off
/// (`on`) or on again, for `crvs repair` on a connection that unlocked the
/// store: the MACs it writes still need the key.
pub fn set_repairing(conn: &Connection, on: bool) -> Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
    conn.create_scalar_function("crvs_repairing", 0, flags, move |_| Ok(on))?;
    Ok(())
}

/// Recomputes `integrity.sum` from the rows as they are (repair only:
/// the rows deleted or put back cannot be named).
pub fn rebuild_sum(conn: &Connection) -> Result<()> {
    let sum = sum_of_macs(conn)?;
    conn.execute("UPDATE integrity SET sum = ?1 WHERE id = 1", [sum.as_slice()])?;
    Ok(())
}

fn sum_of_macs(conn: &Connection) -> Result<[u8; 32]> {
    let mut sum = [0u8; 32];
    for (table, _, _) in TABLES {
        let mut stmt = conn.prepare(&format!("SELECT mac FROM {table}"))?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            if let ValueRef::Blob(b) = row.get_ref(0)?
                && b.len() == 32
            {
                sum.iter_mut().zip(b).for_each(|(s, x)| *s ^= x);
            }
        }
    }
    Ok(sum)
}

/// HMAC over the arguments, each framed by its type and length, so no two
/// different rows give the same message.
fn row_mac(key: &[u8; 32], ctx: &Context<'_>) -> rusqlite::Result<[u8; 32]> {
    let mut msg = Zeroizing::new(Vec::with_capacity(256));
    for i in 0..ctx.len() {
        let (tag, bytes): (u8, std::borrow::Cow<'_, [u8]>) = match ctx.get_raw(i) {
            ValueRef::Null => (0, (&[][..]).into()),
            ValueRef::Integer(v) => (1, v.to_be_bytes().to_vec().into()),
            ValueRef::Real(v) => (2, v.to_bits().to_be_bytes().to_vec().into()),
            ValueRef::Text(t) => (3, t.into()),
            ValueRef::Blob(b) => (4, b.into()),
        };
        msg.push(tag);
        msg.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        msg.extend_from_slice(&bytes);
    }
    Ok(crate::crypto::hmac_sha256(key, &msg))
}

/// Maps a trigger's refusal to [`Error::Tampered`].
pub fn classify(e: rusqlite::Error) -> Error {
    let text = e.to_string();
    match text.find(TAMPERED_MARK) {
        Some(at) => {
            let table = text[at + TAMPERED_MARK.len()..]
                .trim_start_matches(':')
                .trim()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("")
                .to_string();
            Error::Tampered(vec![format!("{table} (a row refused a write)")])
        }
        None => Error::Storage(text),
    }
}

/// The schema (every table, index, trigger and view, with its SQL) the
/// migrations up to `version` make.
fn expected_schema(migrations: &[&str], version: usize) -> Result<Vec<(String, String, String)>> {
    let conn = Connection::open_in_memory()?;
    register_with(&conn, Zeroizing::new([0u8; 32]))?;
    for sql in migrations.iter().take(version) {
        conn.execute_batch(sql)?;
    }
    schema_of(&conn)
}

fn schema_of(conn: &Connection) -> Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare(
        "SELECT type, name, COALESCE(sql, '') FROM sqlite_schema
         WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
    )?;
    // Whitespace is collapsed: how `ALTER TABLE` rewrites a table's SQL
    // text is SQLite's, and a later SQLite must not make an upgraded store
    // look edited. Everything else (a generated column, a default, a
    // trigger's body) must match exactly.
    let rows = stmt.query_map([], |r| {
        let sql: String = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            sql.split_whitespace().collect::<Vec<_>>().join(" "),
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Checks that the store's schema is exactly what `migrations` up to its
/// `version` make: a trigger or view added to the file could otherwise run
/// with the key once it is registered. Names what differs (names of
/// tables and triggers, never data).
pub fn check_schema(conn: &Connection, migrations: &[&str], version: usize) -> Result<()> {
    let expected = expected_schema(migrations, version)?;
    let actual = schema_of(conn)?;
    if expected == actual {
        return Ok(());
    }
    let mut differ: Vec<String> = Vec::new();
    for (t, n, s) in &actual {
        if !expected.iter().any(|(et, en, es)| et == t && en == n && es == s) {
            differ.push(format!("schema {t} {n}"));
        }
    }
    for (t, n, _) in &expected {
        if !actual.iter().any(|(at, an, _)| at == t && an == n) {
            differ.push(format!("schema {t} {n} (missing)"));
        }
    }
    Err(Error::Tampered(differ))
}

/// Where to look.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every row of every table, and the sum.
    All,
    /// The settings, one record and its proof (what `show` reads).
    Record(&'a [u8; 16]),
}

/// A row that fails its MAC, or the sum.
#[derive(Debug, Clone, PartialEq)]
pub enum Tampered {
    /// A row: its table and primary key.
    Row(&'static str, rusqlite::types::Value),
    /// The sum: rows were deleted, or put back from an older copy.
    Sum,
}

impl std::fmt::Display for Tampered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tampered::Row(table, key) => write!(f, "{table} {}", describe_key(ValueRef::from(key))),
            Tampered::Sum => f.write_str("integrity (rows were deleted or put back from an older copy)"),
        }
    }
}

/// Recomputes the `mac` of the rows in `scope` and, for [`Scope::All`],
/// the sum; names every row that fails: `records <uuid>`, `outbox <seq>`,
/// `meta <key>`, `kidc_evidence <uuid>`, `chain_adoptions <seq>`, or
/// `integrity` when rows were deleted or put back. Ids and keys only.
pub fn tampered_rows(conn: &Connection, scope: Scope<'_>) -> Result<Vec<String>> {
    Ok(tampered(conn, scope)?.iter().map(ToString::to_string).collect())
}

/// [`tampered_rows`], structured.
pub fn tampered(conn: &Connection, scope: Scope<'_>) -> Result<Vec<Tampered>> {
    let mut bad = Vec::new();
    for (table, pk, columns) in TABLES {
        let filter = match (scope, *table) {
            (Scope::All, _) | (_, "meta") => "1",
            (Scope::Record(_), "records") => "id = ?1",
            (Scope::Record(_), "kidc_evidence") => "record_id = ?1",
            (Scope::Record(_), _) => continue,
        };
        let sql = format!(
            "SELECT {pk} FROM {table} WHERE ({filter}) AND mac IS NOT crvs_row_mac('{table}', {columns})"
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = match scope {
            Scope::Record(id) if filter != "1" => stmt.query(params![id.as_slice()])?,
            _ => stmt.query([])?,
        };
        while let Some(row) = rows.next()? {
            bad.push(Tampered::Row(table, row.get::<_, rusqlite::types::Value>(0)?));
        }
    }
    if matches!(scope, Scope::All) {
        let sum = sum_of_macs(conn)?;
        let ok: bool = conn.query_row(
            "SELECT sum = ?1 AND tag IS crvs_row_mac('integrity', id, sum) FROM integrity WHERE id = 1",
            [sum.as_slice()],
            |r| r.get(0),
        )?;
        if !ok {
            bad.push(Tampered::Sum);
        }
    }
    Ok(bad)
}

/// [`tampered_rows`], as an error if any row fails.
pub fn ensure_intact(conn: &Connection, scope: Scope<'_>) -> Result<()> {
    let bad = tampered_rows(conn, scope)?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Tampered(bad))
    }
}

fn describe_key(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) if b.len() == 16 => uuid::Uuid::from_slice(b)
            .map(|u| u.to_string())
            .unwrap_or_default(),
        ValueRef::Blob(b) => hex::encode(b),
        ValueRef::Null | ValueRef::Real(_) => "?".to_string(),
    }
}

/// The tables whose rows carry a MAC, in the order they are checked.
pub fn tables() -> impl Iterator<Item = &'static str> {
    TABLES.iter().map(|(t, _, _)| *t)
}
