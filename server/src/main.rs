//! `crvs-server`: serve, and the operator commands.
//!
//! ```text
//! crvs-server serve        --data DIR --listen ADDR [--tls-cert FILE --tls-key FILE | --insecure-http]
//!                          [--max-connections N] [--metrics-token-file FILE]
//! crvs-server enroll-token --data DIR --commune CODE [--ttl-hours H] [--qr FILE.png]
//! crvs-server devices      --data DIR
//! crvs-server revoke       --data DIR DEVICE_ID
//! crvs-server holds        --data DIR
//! crvs-server release      --data DIR RECORD_ID --by OPERATOR --reason TEXT
//! crvs-server unblock      --data DIR DEVICE_ID --by OPERATOR --reason TEXT
//! crvs-server api-key      --data DIR --name NAME --scope notify
//! crvs-server api-key revoke --data DIR --id ID
//! crvs-server api-key list   --data DIR
//! crvs-server notifications --data DIR [--overdue [--days N]]
//! crvs-server backup       --data DIR --out FILE
//! crvs-server restore      --data DIR --from FILE
//!   (with --database URL: pg_dump / pg_restore, see crvs_server::backup::postgres)
//! CRVS_PIN=… crvs-server staff add --data DIR --commune CODE --id STAFF
//!                          --role clerk|verifier|registrar[,…] [--by OPERATOR]
//! crvs-server staff remove --data DIR --commune CODE --id STAFF [--by OPERATOR]
//! crvs-server staff list   --data DIR --commune CODE
//! crvs-server person       --data DIR KIDC
//! crvs-server registry rebuild --data DIR [--check]
//! ```
//!
//! `staff add` reads the PIN from the environment variable `CRVS_PIN`
//! only, never from the command line (which other users of the machine
//! can read); the roster keeps an Argon2id hash of it (see
//! `crvs_server::staff`).
//!
//! `--json` (anywhere on the line) makes every command print exactly one
//! JSON object on stdout; failures then print `{"error", "message"}` there
//! too, besides a message on stderr and a non-zero exit. Logs go to stderr
//! (`RUST_LOG` filters them; `--log-format json`, or without the flag
//! `CRVS_LOG_FORMAT=json`, makes them JSON lines; no colour codes unless
//! stderr is a terminal).
//!
//! `serve --metrics-token-file FILE` (or `CRVS_METRICS_TOKEN`) serves
//! `GET /metrics` to scrapers with that bearer token (see
//! `crvs_server::metrics`).
//!
//! `serve` terminates TLS itself with `--tls-cert`/`--tls-key`. Without
//! them it serves plain HTTP only on a loopback address, or anywhere with
//! `--insecure-http` (behind a proxy that terminates TLS).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use crvs_server::storage::Storage;
use crvs_server::storage::postgres::PostgresStorage;
use crvs_server::storage::sqlite::SqliteStorage;
use crvs_server::{ApiError, Server, admin, http};
use serde_json::{Value, json};

/// Ingest allocates many small, short-lived objects (automerge columns,
/// JSON values) on several threads: with mimalloc it costs about 15% less
/// CPU per record than with the system allocator (`cargo bench -p
/// crvs-server --bench ingest`, `cpu_microseconds_per_record`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "crvs-server",
    version,
    about = "The central server of the civil registration system"
)]
struct Cli {
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Keep the records in this PostgreSQL database
    /// (`postgres://USER@HOST:PORT/DB`) instead of SQLite in the data
    /// folder, which then holds only the signing key and the KIdC ledger.
    /// Every command takes it; prefer the environment variable, which
    /// other users of the machine cannot read from the process list.
    #[arg(
        long,
        global = true,
        env = "CRVS_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database: Option<String>,
    /// The format of the logs on stderr: text, or json (one object per
    /// line). Overrides CRVS_LOG_FORMAT.
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API until stopped (SIGTERM or Ctrl-C).
    Serve {
        /// The data folder (created on first use).
        #[arg(long)]
        data: PathBuf,
        /// The address to listen on, e.g. 127.0.0.1:8080 (port 0: any).
        #[arg(long)]
        listen: String,
        /// The server's certificate chain (PEM), for HTTPS.
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM: PKCS#8, SEC1 or RSA).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve plain HTTP on a non-loopback address: only behind a proxy
        /// that terminates TLS.
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
        insecure_http: bool,
        /// Open connections at most (also capped by the open-files limit).
        #[arg(long, default_value_t = 4096)]
        max_connections: usize,
        /// The legal period for registering a birth, in days: a birth
        /// registered later carries the late flag.
        #[arg(long, default_value_t = crvs_server::DEFAULT_LATE_BIRTH_DAYS)]
        late_birth_days: u32,
        /// Serve GET /metrics to scrapers that send `Authorization: Bearer`
        /// with the token in this file (mode 0600, at least 32 characters).
        /// Else CRVS_METRICS_TOKEN; with neither, /metrics answers 404.
        #[arg(long, value_name = "FILE")]
        metrics_token_file: Option<PathBuf>,
    },
    /// Create a one-time enrolment token for a commune.
    EnrollToken {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The 6-digit commune code the tablet will serve (a comma-separated
        /// list makes one token per commune: `{"tokens":[...]}` with --json).
        #[arg(long)]
        commune: String,
        /// Hours the token stays valid.
        #[arg(long, default_value_t = 168)]
        ttl_hours: u32,
        /// Also write the token as a QR code to this PNG file (mode 0600;
        /// delete it once printed).
        #[arg(long)]
        qr: Option<PathBuf>,
    },
    /// List the enrolled devices.
    Devices {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
    },
    /// Revoke a device: it is refused from its next request on.
    Revoke {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The device id.
        device_id: String,
    },
    /// List the records held for review.
    Holds {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
    },
    /// Re-check a held record and release it if it now passes (issuing its
    /// KIdC if it is an approved birth). Audited: who, when, why.
    Release {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The record id.
        record_id: String,
        /// The operator's id.
        #[arg(long)]
        by: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Unblock a device stuck behind a change set it cannot fix: that change
    /// set is set aside when it next comes (kept as evidence, nothing of it
    /// applied; its records must be registered again). Audited.
    Unblock {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The device id.
        device_id: String,
        /// The operator's id.
        #[arg(long)]
        by: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Make an API key for an institution's system (shown once; only its
    /// hash is kept), or revoke or list keys.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    ApiKey {
        #[command(subcommand)]
        action: Option<ApiKeyAction>,
        /// The data folder.
        #[arg(long, required = true)]
        data: Option<PathBuf>,
        /// Who holds the key (the system's name, for the operators).
        #[arg(long, required = true)]
        name: Option<String>,
        /// What the key may do: notify (send birth and death
        /// notifications), or verify (reserved; grants nothing yet).
        #[arg(long, required = true)]
        scope: Option<String>,
    },
    /// List the birth and death notifications not yet registered (ids and
    /// codes only), or with --overdue those received more than --days ago.
    Notifications {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// Only those unregistered for more than --days days.
        #[arg(long, conflicts_with = "registered")]
        overdue: bool,
        /// Those registered in the last --days days, each with the time
        /// from the notification to its registration, and the median.
        #[arg(long)]
        registered: bool,
        /// Days after which an unregistered notification is overdue.
        #[arg(long, default_value_t = crvs_server::notify::DEFAULT_OVERDUE_DAYS)]
        days: u32,
    },
    /// Copy the database to FILE while the server runs: SQLite's online
    /// backup, or with --database a pg_dump of one snapshot (pg_dump and
    /// pg_restore on PATH or in /usr/lib/postgresql/*/bin).
    Backup {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The backup file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// The staff roster of a commune: who may act on its tablets, with
    /// which roles. Every change is kept in an append-only history.
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
    /// Show a person of the Population Registry by KIdC.
    Person {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The person's KIdC.
        kidc: String,
    },
    /// The Population Registry.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Replace the database with a backup. The server must be stopped
    /// (with --database: every server of that database); the replaced
    /// database is moved aside (a folder replaced-<ms>, or the schema
    /// crvs_replaced_<ms>), and the KIdC ledger is kept.
    Restore {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum StaffCommand {
    /// Add a staff member to a commune's roster, or change the roles (and,
    /// with CRVS_PIN set, the PIN) of one on it. The PIN comes from the
    /// environment variable CRVS_PIN only: 6 to 12 digits, not one digit
    /// repeated, not a straight run. It is required to add a person.
    Add {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The 6-digit commune code.
        #[arg(long)]
        commune: String,
        /// The staff id (compared without regard to case: CLERK-01 and
        /// clerk-01 are one person).
        #[arg(long)]
        id: String,
        /// The roles, comma-separated: clerk, verifier, registrar (may be
        /// given more than once).
        #[arg(long = "role", required = true, value_name = "ROLES")]
        roles: Vec<String>,
        /// The operator's id, for the history (default: the OS user).
        #[arg(long)]
        by: Option<String>,
    },
    /// Take a staff member off a commune's roster: they cannot act from
    /// the tablets' next sync on.
    Remove {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The 6-digit commune code.
        #[arg(long)]
        commune: String,
        /// The staff id.
        #[arg(long)]
        id: String,
        /// The operator's id, for the history (default: the OS user).
        #[arg(long)]
        by: Option<String>,
    },
    /// List a commune's roster, removed members included (never a PIN or
    /// its hash).
    List {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The 6-digit commune code.
        #[arg(long)]
        commune: String,
    },
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Rebuild the registry from its event log, replacing it; with --check,
    /// rebuild it aside and compare (nothing is changed; a non-zero exit
    /// and the differing person ids when it is not identical).
    Rebuild {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// Compare only.
        #[arg(long)]
        check: bool,
    },
    /// Vital statistics: per office and kind of event, the events
    /// registered and how many of them late (after the legal period).
    Stats {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// Only the events registered in this year.
        #[arg(long)]
        year: Option<i32>,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeyAction {
    /// Revoke a key: it is refused from its next request on.
    Revoke {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The key's id (printed when it was made, and by `api-key list`).
        #[arg(long)]
        id: String,
    },
    /// List the keys (ids, names, scopes; never the keys).
    List {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
    },
}

fn staff_line(s: &crvs_server::staff::StaffView) -> String {
    format!(
        "{}  {}{}",
        s.id,
        if s.roles.is_empty() {
            "no roles".to_string()
        } else {
            s.roles.names().join(",")
        },
        s.removed_at
            .map_or(String::new(), |t| format!("  REMOVED at {t}"))
    )
}

fn run_staff(json_mode: bool, command: StaffCommand) -> Result<(), ApiError> {
    use crvs_server::staff;
    match command {
        StaffCommand::Add {
            data,
            commune,
            id,
            roles,
            by,
        } => {
            let pin = staff::Pin::from_env()
                .map_err(|e| ApiError::Invalid(format!("{} refused: {e}", staff::PIN_ENV)))?;
            // Everything checked, and the PIN hashed, before the data
            // folder is opened.
            let addition = staff::prepare_add(&commune, &id, &roles.join(","), pin.as_ref(), by.as_deref())?;
            drop(pin);
            let server = open_existing(&data)?;
            let c = staff::add(&server, &addition)?;
            let what = if c.changes.is_empty() {
                "unchanged".to_string()
            } else {
                c.changes
                    .iter()
                    .map(|e| e.as_str().replace('_', " "))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            print_line(
                json_mode,
                &to_json(&c)?,
                &format!("commune {}: {} ({what})", c.commune, staff_line(&c.staff)),
            );
            Ok(())
        }
        StaffCommand::Remove {
            data,
            commune,
            id,
            by,
        } => {
            staff::check_commune(&commune)?;
            let server = open_existing(&data)?;
            let c = staff::remove(&server, &commune, &id, by.as_deref())?;
            print_line(
                json_mode,
                &to_json(&c)?,
                &format!("{} removed from the roster of commune {}", c.staff.id, c.commune),
            );
            Ok(())
        }
        StaffCommand::List { data, commune } => {
            staff::check_commune(&commune)?;
            let server = open_existing(&data)?;
            let roster = staff::list(&server, &commune)?;
            let text = lines(&roster, "no staff", staff_line);
            print_line(json_mode, &json!({"staff": roster}), &text);
            Ok(())
        }
    }
}

fn backup_error(e: crvs_server::backup::BackupError) -> ApiError {
    use crvs_server::backup::BackupError;
    match e {
        BackupError::Storage(s) => storage_error(s),
        BackupError::Io(io) => ApiError::Internal(format!("i/o error: {io}")),
        other => ApiError::Invalid(other.to_string()),
    }
}

/// The scrape token of `GET /metrics`: from `--metrics-token-file`, else
/// from `CRVS_METRICS_TOKEN`, else none. A bad one stops the start.
fn metrics_token(
    file: Option<&std::path::Path>,
) -> Result<Option<crvs_server::metrics::MetricsToken>, ApiError> {
    use crvs_server::metrics::MetricsToken;
    match file {
        Some(path) => MetricsToken::from_file(path).map(Some),
        None => MetricsToken::from_env().transpose(),
    }
    .map_err(ApiError::Invalid)
}

/// JSON logs when `--log-format json` says so, or, without the flag,
/// `CRVS_LOG_FORMAT=json`.
fn init_logging(format: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in log files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let json = match format {
        Some(f) => f == "json",
        None => std::env::var("CRVS_LOG_FORMAT").is_ok_and(|v| v == "json"),
    };
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// How often a serving process checks that it still holds the PostgreSQL
/// serving lock.
const SERVING_LOCK_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The PostgreSQL database of every command (`--database`), if any.
static DATABASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn database() -> Option<&'static str> {
    DATABASE.get().and_then(|d| d.as_deref())
}

fn open(dir: &std::path::Path) -> Result<Server, ApiError> {
    match database() {
        Some(url) => Server::open_postgres(dir, url, crvs_server::system_clock()),
        None => Server::open(dir),
    }
    .map_err(storage_error)
}

/// A storage failure as the operator sees it: an interrupted restore is
/// something to do, not a server fault.
fn storage_error(e: crvs_server::storage::StorageError) -> ApiError {
    match e {
        crvs_server::storage::StorageError::RestoreInterrupted => ApiError::Invalid(e.to_string()),
        other => ApiError::from(other),
    }
}

/// Opens the server of an existing data folder, for the operator commands
/// that change it: a mistyped `--data` must fail, not make a new server
/// (with a new key) that takes a staff member, an API key or a revocation
/// the real one never sees. Only `serve` and `enroll-token` make one.
fn open_existing(dir: &std::path::Path) -> Result<Server, ApiError> {
    let marker = match database() {
        Some(_) => crvs_server::keys::KEY_FILE,
        None => crvs_server::DB_FILE,
    };
    if !dir.join(marker).exists() {
        return Err(no_database(dir));
    }
    open(dir)
}

fn no_database(dir: &std::path::Path) -> ApiError {
    if database().is_some() {
        return ApiError::Invalid(format!(
            "no server in {}: check --data (a server's folder holds its key, {}; `crvs-server serve --database URL --data DIR` makes one)",
            dir.display(),
            crvs_server::keys::KEY_FILE
        ));
    }
    ApiError::Invalid(format!(
        "no server database in {}: check --data (a server's data folder holds {}; `crvs-server serve --data DIR` makes one)",
        dir.display(),
        crvs_server::DB_FILE
    ))
}

/// The database alone, for commands that only read it: no server actor is
/// started and the ledger is not opened (a running server keeps both).
fn open_storage(dir: &std::path::Path) -> Result<Box<dyn Storage>, ApiError> {
    if let Some(url) = database() {
        return Ok(Box::new(PostgresStorage::connect(url).map_err(storage_error)?));
    }
    let db = dir.join(crvs_server::DB_FILE);
    if !db.exists() {
        return Err(no_database(dir));
    }
    Ok(Box::new(SqliteStorage::open(&db)?))
}

/// An operator command's answer as JSON.
fn to_json(answer: &impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(answer).map_err(|e| ApiError::Internal(e.to_string()))
}

/// One line per item, or `none` when there is no item.
fn lines<T>(items: &[T], none: &str, line: impl Fn(&T) -> String) -> String {
    if items.is_empty() {
        none.to_string()
    } else {
        items.iter().map(line).collect::<Vec<_>>().join("\n")
    }
}

fn print_line(json_mode: bool, value: &Value, text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = if json_mode {
        writeln!(out, "{value}")
    } else {
        writeln!(out, "{text}")
    };
    let _ = out.flush();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

fn run(cli: Cli) -> Result<(), ApiError> {
    let json_mode = cli.json;
    let _ = DATABASE.set(cli.database.clone());
    match cli.command {
        Command::Serve {
            data,
            listen,
            tls_cert,
            tls_key,
            insecure_http,
            max_connections,
            late_birth_days,
            metrics_token_file,
        } => {
            let metrics_token = metrics_token(metrics_token_file.as_deref())?;
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => {
                    Some(crvs_server::listener::tls_config(cert, key).map_err(ApiError::Invalid)?)
                }
                _ => None,
            };
            if let Some(limit) = crvs_server::listener::raise_fd_limit() {
                tracing::info!(
                    open_files_limit = limit,
                    "open-files limit (soft limit raised to the hard limit)"
                );
            }
            // One serving process per data folder; `restore` waits for none.
            let _lock = crvs_server::backup::lock_data_dir(&data).map_err(backup_error)?;
            // On PostgreSQL, the database is marked served (a shared
            // advisory lock of a connection of its own), so that `restore`
            // refuses while any server uses it.
            // A thread keeps it for as long as the process runs, taking it
            // again if its connection is lost (`ServingLock::keep`).
            if let Some(url) = database() {
                crvs_server::storage::postgres::ServingLock::serve(url)
                    .map_err(|e| ApiError::Invalid(e.to_string()))?
                    .keep(url.to_string(), SERVING_LOCK_CHECK);
            }
            let server = Arc::new(
                open(&data)?
                    .with_late_birth_days(late_birth_days)
                    .with_metrics_token(metrics_token),
            );
            // The server is dropped here, after the runtime: PostgreSQL
            // connections close with a blocking call, which may not run on
            // a runtime thread.
            let kept = Arc::clone(&server);
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| ApiError::Internal(format!("cannot start the runtime: {e}")))?;
            let served = runtime.block_on(async move {
                let listener = crvs_server::listener::bind(&listen)
                    .await
                    .map_err(|e| ApiError::Invalid(format!("cannot listen on {listen}: {e}")))?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| ApiError::Internal(format!("no local address: {e}")))?;
                if tls.is_none() && !insecure_http && !addr.ip().is_loopback() {
                    return Err(ApiError::Invalid(format!(
                        "refusing to serve plain HTTP on {addr}, which is not a loopback address: \
                         enrolment tokens and sync traffic would cross the network unencrypted. \
                         Give --tls-cert FILE --tls-key FILE to serve HTTPS, or --insecure-http \
                         if a proxy in front of this server terminates TLS."
                    )));
                }
                let is_tls = tls.is_some();
                tracing::info!(%addr, tls = is_tls, "listening");
                let mut value = json!({"listening": addr.to_string()});
                if is_tls {
                    value["tls"] = json!(true);
                }
                print_line(
                    json_mode,
                    &value,
                    &format!("listening on {addr}{}", if is_tls { " (https)" } else { "" }),
                );
                let config = crvs_server::listener::ListenerConfig {
                    tls,
                    max_connections,
                    ..Default::default()
                };
                http::serve_with_config(listener, server, config, shutdown_signal())
                    .await
                    .map_err(|e| ApiError::Internal(format!("server failed: {e}")))
            });
            drop(runtime);
            drop(kept);
            served
        }
        Command::EnrollToken {
            data,
            commune,
            ttl_hours,
            qr,
        } if commune.contains(',') => {
            // Several communes: one token each, one transaction each.
            if qr.is_some() {
                return Err(ApiError::Invalid("--qr takes one commune, not a list".into()));
            }
            let server = open(&data)?;
            let mut tokens = Vec::new();
            for c in commune.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                tokens.push(admin::create_token(&server, c, i64::from(ttl_hours) * 3_600_000)?);
            }
            let text = tokens
                .iter()
                .map(|t| format!("{} {}", t.commune, t.token))
                .collect::<Vec<_>>()
                .join("\n");
            print_line(json_mode, &json!({ "tokens": to_json(&tokens)? }), &text);
            Ok(())
        }
        Command::EnrollToken {
            data,
            commune,
            ttl_hours,
            qr,
        } => {
            let server = open(&data)?;
            let t = admin::create_token(&server, &commune, i64::from(ttl_hours) * 3_600_000)?;
            if let Some(path) = &qr {
                admin::write_token_qr(&t.token, path)?;
            }
            let mut value = to_json(&t)?;
            if let Some(path) = &qr {
                value["qr"] = json!(path.display().to_string());
            }
            print_line(json_mode, &value, &t.token);
            Ok(())
        }
        Command::Devices { data } => {
            let devices = admin::devices(&*open_storage(&data)?)?;
            let text = lines(&devices, "no devices", |d| {
                format!(
                    "{}  commune {}  {}  last sync {}  seq {}  {}{}{}{}",
                    d.device_id,
                    d.commune,
                    if d.revoked { "REVOKED" } else { "active" },
                    d.last_sync.map_or("never".to_string(), |t| t.to_string()),
                    d.last_seq,
                    d.reported
                        .as_ref()
                        .map_or("app unknown, outbox unknown".to_string(), |r| format!(
                            "app {}, outbox {} change sets ({} records)",
                            r.app_version, r.change_sets_waiting, r.records_waiting
                        )),
                    if d.clock_flagged { "  CLOCK OFF" } else { "" },
                    d.blocked.as_ref().map_or(String::new(), |b| format!(
                        "  BLOCKED at change set {} ({})",
                        b.seq, b.code
                    )),
                    d.clone.as_ref().map_or(String::new(), |c| format!(
                        "  CLONE: {} requests from another copy of its store refused",
                        c.refusals
                    ))
                )
            });
            print_line(json_mode, &json!({"devices": devices}), &text);
            Ok(())
        }
        Command::Holds { data } => {
            let holds = admin::holds(&*open_storage(&data)?)?;
            let text = lines(&holds, "no holds", |h| {
                format!(
                    "{}  commune {}  {}  since {}",
                    h.record_id, h.office, h.reason, h.since
                )
            });
            print_line(json_mode, &json!({"holds": holds}), &text);
            Ok(())
        }
        Command::Release {
            data,
            record_id,
            by,
            reason,
        } => {
            let server = open_existing(&data)?;
            let r = admin::release(&server, &record_id, &by, &reason)?;
            let value = to_json(&r)?;
            let text = if r.released {
                format!(
                    "record {} released: {}{}",
                    r.record_id,
                    r.status,
                    r.kidc.as_ref().map_or(String::new(), |k| format!(", KIdC {k}"))
                )
            } else {
                format!("record {} stays held: {}", r.record_id, r.problems.join("; "))
            };
            print_line(json_mode, &value, &text);
            Ok(())
        }
        Command::Unblock {
            data,
            device_id,
            by,
            reason,
        } => {
            let server = open_existing(&data)?;
            let u = admin::unblock(&server, &device_id, &by, &reason)?;
            let value = to_json(&u)?;
            print_line(
                json_mode,
                &value,
                &format!(
                    "device {} unblocked: change set {} ({}) will be set aside at its next sync; its records must be registered again",
                    u.device_id, u.seq, u.code
                ),
            );
            Ok(())
        }
        Command::ApiKey {
            action: None,
            data: Some(data),
            name: Some(name),
            scope: Some(scope),
        } => {
            let server = open_existing(&data)?;
            let k = crvs_server::api_keys::create(&server, &name, &scope)?;
            let value = to_json(&k)?;
            print_line(json_mode, &value, &k.key);
            if !json_mode {
                eprintln!(
                    "API key {} ({}, scope {}): give it to the system now; it is not shown again",
                    k.id, k.name, k.scope
                );
            }
            Ok(())
        }
        Command::ApiKey { action: None, .. } => Err(ApiError::Invalid(
            "api-key needs --data, --name and --scope".into(),
        )),
        Command::ApiKey {
            action: Some(ApiKeyAction::Revoke { data, id }),
            ..
        } => {
            let server = open_existing(&data)?;
            let k = crvs_server::api_keys::revoke(&server, &id)?;
            let value = json!({"id": k.id, "revoked": true, "revoked_at": k.revoked_at});
            print_line(
                json_mode,
                &value,
                &format!("API key {} ({}) revoked", k.id, k.name),
            );
            Ok(())
        }
        Command::ApiKey {
            action: Some(ApiKeyAction::List { data }),
            ..
        } => {
            let server = open_existing(&data)?;
            let keys = crvs_server::api_keys::list(&server)?;
            let text = lines(&keys, "no API keys", |k| {
                format!(
                    "{}  {}  scope {}  {}",
                    k.id,
                    k.name,
                    k.scope,
                    if k.revoked_at.is_some() {
                        "REVOKED"
                    } else {
                        "active"
                    }
                )
            });
            print_line(json_mode, &json!({"api_keys": keys}), &text);
            Ok(())
        }
        Command::Notifications {
            data,
            registered: true,
            days,
            ..
        } => {
            let server = open_existing(&data)?;
            let (list, median) = crvs_server::notify::registered(&server, days)?;
            let text = lines(&list, "no notifications registered", |n| {
                format!(
                    "{}  {}  commune {}  registered by {} after {} h",
                    n.notification_id, n.kind, n.commune, n.registered_record_id, n.hours_to_registration
                )
            });
            print_line(
                json_mode,
                &json!({"notifications": list, "median_hours_to_registration": median}),
                &text,
            );
            Ok(())
        }
        Command::Notifications {
            data, overdue, days, ..
        } => {
            let server = open_existing(&data)?;
            let list = crvs_server::notify::unregistered(&server, overdue.then_some(days))?;
            let text = lines(&list, "no notifications", |n| {
                format!(
                    "{}  {}  commune {}  received {}  {} {}",
                    n.notification_id, n.kind, n.commune, n.received_at, n.source_system, n.reference
                )
            });
            print_line(json_mode, &json!({"notifications": list}), &text);
            Ok(())
        }
        Command::Backup { data, out } => {
            let now = crvs_server::system_clock()();
            let r = match database() {
                Some(url) => crvs_server::backup::postgres::backup(url, &out, now),
                None => crvs_server::backup::backup(&data, &out, now),
            }
            .map_err(backup_error)?;
            let value = to_json(&r)?;
            print_line(
                json_mode,
                &value,
                &format!(
                    "backup written to {} ({} bytes: {} records, {} codes, {} devices)",
                    r.file.display(),
                    r.bytes,
                    r.records,
                    r.issuances,
                    r.devices
                ),
            );
            Ok(())
        }
        Command::Restore { data, from } => {
            let now = crvs_server::system_clock()();
            let r = match database() {
                Some(url) => {
                    // The folder of the server being restored: its key and
                    // its KIdC ledger.
                    if !data.join(crvs_server::keys::KEY_FILE).exists() {
                        return Err(no_database(&data));
                    }
                    crvs_server::backup::postgres::restore(&data, url, &from, now)
                }
                None => crvs_server::backup::restore(&data, &from, now),
            }
            .map_err(backup_error)?;
            let value = to_json(&r)?;
            print_line(
                json_mode,
                &value,
                &format!(
                    "restored from {}: {} codes in the backup, {} issued since and reserved, recorded again as tablets resend{}",
                    r.restored_from.display(),
                    r.issuances,
                    r.codes_to_record_again,
                    if r.ledger_rebuilt {
                        "; WARNING: the KIdC ledger was missing and was rebuilt from the backup alone"
                    } else {
                        ""
                    }
                ),
            );
            Ok(())
        }
        Command::Staff { command } => run_staff(json_mode, command),
        Command::Person { data, kidc } => {
            let kidc = crvs_schema::Kidc::parse(&kidc)
                .map_err(|e| ApiError::Invalid(format!("the KIdC given {e}")))?;
            let storage = open_storage(&data)?;
            let Some(p) = crvs_server::registry::person(&*storage, &kidc)? else {
                return Err(ApiError::NoSuchPerson);
            };
            print_line(json_mode, &to_json(&p)?, &crvs_server::registry::person_text(&p));
            Ok(())
        }
        Command::Registry {
            command: RegistryCommand::Stats { data, year },
        } => {
            let storage = open_storage(&data)?;
            let stats = storage.registration_stats(year)?;
            let text = lines(&stats, "no registered events", |s| {
                format!(
                    "{}  {:<9}  {} registered, {} late",
                    s.office, s.kind, s.registered, s.late
                )
            });
            print_line(json_mode, &json!({ "year": year, "stats": stats }), &text);
            Ok(())
        }
        Command::Registry {
            command: RegistryCommand::Rebuild { data, check },
        } => {
            let storage = open_storage(&data)?;
            let r = if check {
                crvs_server::registry::rebuild_check(&*storage, &data)?
            } else {
                crvs_server::registry::rebuild(&*storage)?
            };
            if !r.identical {
                // Ids only: which persons (and log entries) differ.
                let mut what = format!("persons {}", r.differing_persons.join(" "));
                if !r.differing_events.is_empty() {
                    let seqs: Vec<String> = r.differing_events.iter().map(u64::to_string).collect();
                    what.push_str(&format!("; event log entries {}", seqs.join(" ")));
                }
                return Err(ApiError::Invalid(format!(
                    "the registry differs from its rebuild from {} events: {what}",
                    r.events
                )));
            }
            let text = format!(
                "{}: {} events, {} persons, digest {}",
                if check {
                    "registry identical to its rebuild"
                } else {
                    "registry rebuilt from its event log"
                },
                r.events,
                r.persons,
                r.digest
            );
            print_line(json_mode, &to_json(&r)?, &text);
            Ok(())
        }
        Command::Revoke { data, device_id } => {
            let server = open_existing(&data)?;
            let d = admin::revoke(&server, &device_id)?;
            let id = d.device_id.to_string();
            print_line(
                json_mode,
                &json!({"device_id": id, "revoked": true, "revoked_at": d.revoked_at_ms}),
                &format!("device {id} revoked"),
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let wants_json = std::env::args().any(|a| a == "--json");
            if wants_json && e.use_stderr() {
                let msg = e.to_string();
                println!("{}", json!({"error": "usage", "message": msg.trim()}));
                eprint!("{msg}");
                return ExitCode::from(2);
            }
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.log_format.as_deref());
    let json_mode = cli.json;
    if let Err(e) = crvs_server::fault::check_env() {
        // Only tests arm fault points; a misspelt one must not pass unseen.
        eprintln!("error: {e}");
        if json_mode {
            println!("{}", json!({"error": "usage", "message": e}));
        }
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if json_mode {
                let body = json!({"error": e.code(), "message": e.to_string()});
                println!("{body}");
            }
            ExitCode::FAILURE
        }
    }
}
