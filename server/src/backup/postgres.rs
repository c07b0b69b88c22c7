//! Backup and restore of a PostgreSQL database (`--database URL`), with
//! the guarantees of the SQLite ones ([`super`]).
//!
//! * [`backup`] runs `pg_dump -Fc` on a snapshot this process exports
//!   (`pg_export_snapshot`, REPEATABLE READ), so the report's counts and
//!   the dump are the same consistent state, while servers keep writing.
//!   The dump goes to a 0600 file beside the target, is checked
//!   (`pg_restore --list` reads it and lists the server's tables), and is
//!   then linked into place (never over an existing file). Schemas set
//!   aside by earlier restores (`crvs_replaced_*`) are left out.
//! * [`restore`] refuses while any server serves the database: every
//!   `serve` holds [`crate::storage::postgres::SERVING_LOCK`] shared, and the restore takes it
//!   exclusively for its whole run (so no server starts during it). The
//!   schema `public` it replaces is renamed `crvs_replaced_<ms>`, never
//!   dropped; the backup is restored into a new `public` with
//!   `pg_restore --single-transaction` (if it fails, the old schema is put
//!   back); then the storage migrations run and the steps every restore
//!   takes follow ([`super::adjust`], [`super::finish`]): each office's
//!   feed counter raised above anything the backup or the replaced schema
//!   handed out, request counters jumped, unused tokens expired, what the
//!   ledger keeps applied again.
//!
//! The connection settings reach `pg_dump` and `pg_restore` through the
//! environment (`PGHOST`, `PGPASSWORD`, ...), never their command line
//! (which other users can read), and no message repeats them.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use postgres::IsolationLevel;

use super::{BackupError, BackupReport, RestoreReport, lock_data_dir, parent, sync_dir};
use crate::storage::postgres::{
    PostgresStorage, RESTORE_PENDING, ServingLock, config, connect_one, restore_pending,
};
use crate::storage::{FeedHead, StorageError};

/// The tables a server's dump must hold.
const REQUIRED_TABLES: &[&str] = &[
    "server_meta",
    "devices",
    "records",
    "kidc_issuance",
    "change_set_log",
    "server_changes",
    "feed_counters",
    "schema_version",
];

/// The schemas a restore sets aside start with this.
pub const REPLACED_PREFIX: &str = "crvs_replaced_";

/// Whether `schema` is a name [`restore`] makes: the prefix and the
/// milliseconds of the restore, nothing else.
fn made_here(schema: &str) -> bool {
    schema
        .strip_prefix(REPLACED_PREFIX)
        .is_some_and(|ms| !ms.is_empty() && ms.len() <= 20 && ms.bytes().all(|b| b.is_ascii_digit()))
}

/// The PostgreSQL program `name` (`pg_dump`, `pg_restore`): on `PATH`,
/// else in the newest `/usr/lib/postgresql/*/bin`.
pub fn find_program(name: &'static str) -> Result<PathBuf, BackupError> {
    if let Some(path) = std::env::var_os("PATH")
        && let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    {
        return Ok(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or(BackupError::NoProgram(name))
}

/// The libpq environment of `url`: what `pg_dump` and `pg_restore` need
/// to reach the database, password included, off their command line.
fn libpq_env(url: &str) -> Result<Vec<(&'static str, OsString)>, BackupError> {
    let config = config(url)?;
    let mut env: Vec<(&'static str, OsString)> = Vec::new();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        env.push(("PGHOST", hosts.join(",").into()));
    }
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        env.push(("PGPORT", ports.join(",").into()));
    }
    if let Some(user) = config.get_user() {
        env.push(("PGUSER", user.into()));
    }
    if let Some(password) = config.get_password() {
        env.push((
            "PGPASSWORD",
            OsString::from(String::from_utf8_lossy(password).into_owned()),
        ));
    }
    if let Some(db) = config.get_dbname() {
        env.push(("PGDATABASE", db.into()));
    }
    if let Some(options) = config.get_options() {
        env.push(("PGOPTIONS", options.into()));
    }
    env.push(("PGAPPNAME", "crvs-server".into()));
    env.push(("PGCONNECT_TIMEOUT", "10".into()));
    // The archive's header dates the dump in UTC (restore reads it).
    env.push(("TZ", "UTC".into()));
    Ok(env)
}

/// A program's failure, in words that hold no data: its own `error:`
/// lines only (never a `DETAIL` or `CONTEXT` line, which may quote a row).
fn program_failed(what: &str, stderr: &[u8], hint: &str) -> BackupError {
    let text = String::from_utf8_lossy(stderr);
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("error:"))
        .map(|l| l.split("DETAIL").next().unwrap_or(l).trim())
        .take(3)
        .collect();
    let said = if errors.is_empty() {
        String::new()
    } else {
        format!(": {}", errors.join("; "))
    };
    BackupError::Program(format!("{what} failed{said}; {hint}"))
}

/// Checks that `file` is a custom-format dump of a crvs-server database;
/// returns when it was taken (ms), if its header says.
fn check_dump(pg_restore: &Path, file: &Path) -> Result<Option<i64>, BackupError> {
    let bad = |why: &str| BackupError::NotABackup(file.to_path_buf(), why.to_string());
    if !file.is_file() {
        return Err(bad("there is no such file"));
    }
    if super::file_starts_with(file, b"SQLite format 3") {
        return Err(bad(
            "it is a backup of an SQLite server; restore it without --database (and without CRVS_DATABASE_URL)",
        ));
    }
    if !super::file_starts_with(file, b"PGDMP") {
        return Err(bad(
            "it is not a PostgreSQL backup made by `crvs-server backup --database` (pg_dump -Fc)",
        ));
    }
    let out = Command::new(pg_restore)
        .arg("--list")
        .arg(file)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(bad("pg_restore cannot read it (a damaged or cut-short dump)"));
    }
    let toc = String::from_utf8_lossy(&out.stdout);
    for table in REQUIRED_TABLES {
        let listed = |kind: &str| {
            toc.lines()
                .any(|l| l.contains(&format!(" {kind} public {table} ")))
        };
        if !listed("TABLE") || !listed("TABLE DATA") {
            return Err(bad("it lacks the server's tables (a dump of another database?)"));
        }
    }
    Ok(toc
        .lines()
        .find_map(|l| l.strip_prefix("; Archive created at "))
        .and_then(parse_utc))
}

/// `YYYY-MM-DD HH:MM:SS UTC` as ms since the epoch.
fn parse_utc(s: &str) -> Option<i64> {
    let s = s.trim().strip_suffix(" UTC")?;
    let (date, time) = s.split_once(' ')?;
    let d: Vec<i64> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

/// Dumps the database at `url` to `out` (which must not exist), online.
pub fn backup(url: &str, out: &Path, now_ms: i64) -> Result<BackupReport, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    let pg_dump = find_program("pg_dump")?;
    let pg_restore = find_program("pg_restore")?;
    let env = libpq_env(url)?;

    // One snapshot for the counts and the dump.
    let mut client = connect_one(url)?;
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(StorageError::from)?;
    let tables: i64 = tx
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY($1)",
            &[&REQUIRED_TABLES],
        )
        .map_err(StorageError::from)?
        .get(0);
    // A half-finished restore is not a state to keep.
    if restore_pending(&mut tx)? {
        return Err(StorageError::RestoreInterrupted.into());
    }
    if tables != REQUIRED_TABLES.len() as i64 {
        return Err(BackupError::Program(
            "the database has no crvs-server tables: check --database (a server makes them at its first start)"
                .into(),
        ));
    }
    let snapshot: String = tx
        .query_one("SELECT pg_export_snapshot()", &[])
        .map_err(StorageError::from)?
        .get(0);
    let mut count = |table: &str| -> Result<u64, BackupError> {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .map_err(StorageError::from)?
            .get(0);
        Ok(n as u64)
    };
    let records = count("records")?;
    let issuances = count("kidc_issuance")?;
    let devices = count("devices")?;

    let partial = out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    crate::private_file(&partial)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&partial)?;
    let dumped = Command::new(&pg_dump)
        .args(["--format=custom", "--no-password"])
        .arg(format!("--exclude-schema={REPLACED_PREFIX}*"))
        .arg(format!("--exclude-table=public.{RESTORE_PENDING}"))
        .arg(format!("--snapshot={snapshot}"))
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::piped())
        .output()?;
    // The snapshot is needed until pg_dump has taken it.
    tx.commit().map_err(StorageError::from)?;
    drop(client);
    let checked = if dumped.status.success() {
        File::open(&partial)?.sync_all()?;
        check_dump(&pg_restore, &partial).map(|_| ())
    } else {
        Err(program_failed(
            "pg_dump",
            &dumped.stderr,
            "check --database, and that pg_dump is of the server's major version or newer",
        ))
    };
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    // A link, not a rename: never over a file made in the meantime.
    match std::fs::hard_link(&partial, out) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&partial);
            return Err(BackupError::Exists(out.to_path_buf()));
        }
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_file(&partial)?;
    sync_dir(parent(out))?;
    Ok(BackupReport {
        file: out.to_path_buf(),
        bytes: std::fs::metadata(out)?.len(),
        records,
        issuances,
        devices,
        taken_at_ms: now_ms,
    })
}

/// Replaces the contents of the database at `url` with the backup `from`;
/// `data` is the folder (key and KIdC ledger) of the server being
/// restored. Every server of the database must be stopped.
pub fn restore(data: &Path, url: &str, from: &Path, now_ms: i64) -> Result<RestoreReport, BackupError> {
    let _dir = lock_data_dir(data)?;
    let pg_restore = find_program("pg_restore")?;
    let backup_taken_at_ms = check_dump(&pg_restore, from)?;
    let env = libpq_env(url)?;
    let Some(mut lock) = ServingLock::restore(url)? else {
        return Err(BackupError::Serving);
    };
    let c = lock.client();

    // A restore that stopped half-way left its marker in `public`, naming
    // the schema it set aside: that one, not the half-restored `public`,
    // holds what is being replaced.
    let pending = restore_pending(c)?;
    let earlier_aside: Option<String> = if pending {
        let rows = c
            .query(&format!("SELECT aside FROM public.{RESTORE_PENDING}"), &[])
            .map_err(StorageError::from)?;
        // No row: the restore stopped before there was anything to set
        // aside. One row: the name this code wrote, else nothing is
        // guessed (and no other name goes into SQL).
        match rows.as_slice() {
            [] => None,
            [row] => match row.try_get::<_, Option<String>>(0).ok().flatten() {
                Some(a) if made_here(&a) => Some(a),
                _ => return Err(BackupError::BadRestoreMarker),
            },
            _ => return Err(BackupError::BadRestoreMarker),
        }
    } else {
        None
    };
    let has_public: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public')",
            &[],
        )
        .map_err(StorageError::from)?
        .get(0);
    // Any relation but the marker.
    let has_tables: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
                            WHERE n.nspname = 'public' AND k.relname <> $1)",
            &[&RESTORE_PENDING],
        )
        .map_err(StorageError::from)?
        .get(0);
    // The feed counters of the data being replaced (if readable).
    let replaced_schema = earlier_aside.as_deref().unwrap_or("public");
    let counters: bool = c
        .query_one(
            "SELECT to_regclass(quote_ident($1) || '.feed_counters') IS NOT NULL",
            &[&replaced_schema],
        )
        .map_err(StorageError::from)?
        .get(0);
    let replaced_heads: Vec<FeedHead> = if counters {
        c.query(
            &format!("SELECT office::TEXT, last FROM \"{replaced_schema}\".feed_counters"),
            &[],
        )
        .map_err(StorageError::from)?
        .iter()
        .map(|r| FeedHead {
            office: Some(r.get(0)),
            last: r.get::<_, i64>(1).max(0) as u64,
        })
        .collect()
    } else {
        Vec::new()
    };

    // Set the old schema aside (never dropped) and mark the restore under
    // way, in one transaction: from here until the marker is dropped, no
    // server opens the database (a crash leaves it refused, not empty).
    let aside = format!("{REPLACED_PREFIX}{now_ms}");
    let original = earlier_aside.clone().or(has_tables.then(|| aside.clone()));
    let mut setup = String::new();
    if has_tables {
        setup.push_str(&format!(
            "ALTER SCHEMA public RENAME TO {aside}; CREATE SCHEMA public;"
        ));
    } else if !has_public {
        setup.push_str("CREATE SCHEMA public;");
    }
    setup.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS public.{RESTORE_PENDING} (aside TEXT);
         DELETE FROM public.{RESTORE_PENDING};"
    ));
    {
        let mut tx = c.transaction().map_err(StorageError::from)?;
        tx.batch_execute(&setup).map_err(StorageError::from)?;
        if let Some(original) = &original {
            tx.execute(
                &format!("INSERT INTO public.{RESTORE_PENDING} (aside) VALUES ($1)"),
                &[original],
            )
            .map_err(StorageError::from)?;
        }
        tx.commit().map_err(StorageError::from)?;
    }
    crate::fault::point("restore_set_aside");
    let database = config(url)?.get_dbname().unwrap_or_default().to_string();
    let restored = Command::new(&pg_restore)
        .args([
            "--single-transaction",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
            "--no-password",
        ])
        .arg(format!("--dbname={database}"))
        .arg(from)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !restored.status.success() {
        // Nothing of the backup was kept (one transaction): put the data
        // that was being replaced back.
        if let Some(original) = &original {
            let mut tx = c.transaction().map_err(StorageError::from)?;
            tx.batch_execute(&format!(
                "DROP SCHEMA public CASCADE; ALTER SCHEMA {original} RENAME TO public;"
            ))
            .map_err(StorageError::from)?;
            tx.commit().map_err(StorageError::from)?;
        } else {
            c.batch_execute(&format!("DROP TABLE public.{RESTORE_PENDING}"))
                .map_err(StorageError::from)?;
        }
        return Err(program_failed(
            "pg_restore",
            &restored.stderr,
            "the database is as it was; check --database, and that pg_restore is of the server's major version or newer",
        ));
    }
    crate::fault::point("restore_loaded");

    // This build's schema, then the steps of every restore.
    let storage = PostgresStorage::connect_restoring(url)?;
    let adjusted = super::adjust(&storage, data, &replaced_heads, now_ms, backup_taken_at_ms)?;
    let report = super::finish(
        data,
        &storage,
        from,
        backup_taken_at_ms,
        original,
        adjusted,
        now_ms,
    )?;
    drop(storage);
    // Finished: servers may open the database again.
    c.batch_execute(&format!("DROP TABLE public.{RESTORE_PENDING}"))
        .map_err(StorageError::from)?;
    drop(lock);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_times_parse_as_utc() {
        assert_eq!(parse_utc("1970-01-01 00:00:00 UTC"), Some(0));
        assert_eq!(parse_utc("2026-12-05 14:32:17 UTC"), Some(1_796_481_137_000));
        assert_eq!(parse_utc("2026-12-05 14:32:17 ICT"), None);
    }
}
