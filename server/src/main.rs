//! `crvs-server`: serve, and the operator commands.
//!
//! ```text
//! crvs-server serve        --data DIR --listen ADDR
//! crvs-server enroll-token --data DIR --commune CODE [--ttl-hours H] [--qr FILE.png]
//! crvs-server devices      --data DIR
//! crvs-server revoke       --data DIR DEVICE_ID
//! ```
//!
//! `--json` (anywhere on the line) makes every command print exactly one
//! JSON object on stdout; failures then print `{"error", "message"}` there
//! too, besides a message on stderr and a non-zero exit. Logs go to stderr
//! (`RUST_LOG` filters them; `CRVS_LOG_FORMAT=json` makes them JSON).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
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
    },
    /// Create a one-time enrolment token for a commune.
    EnrollToken {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// The 6-digit commune code the tablet will serve.
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
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("CRVS_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn open(dir: &std::path::Path) -> Result<Server, ApiError> {
    Server::open(dir).map_err(ApiError::from)
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
    match cli.command {
        Command::Serve { data, listen } => {
            let server = Arc::new(open(&data)?);
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| ApiError::Internal(format!("cannot start the runtime: {e}")))?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .map_err(|e| ApiError::Invalid(format!("cannot listen on {listen}: {e}")))?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| ApiError::Internal(format!("no local address: {e}")))?;
                tracing::info!(%addr, "listening");
                print_line(
                    json_mode,
                    &json!({"listening": addr.to_string()}),
                    &format!("listening on {addr}"),
                );
                http::serve_with_shutdown(listener, server, shutdown_signal())
                    .await
                    .map_err(|e| ApiError::Internal(format!("server failed: {e}")))
            })
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
            let mut value = serde_json::to_value(&t).map_err(|e| ApiError::Internal(e.to_string()))?;
            if let Some(path) = &qr {
                value["qr"] = json!(path.display().to_string());
            }
            print_line(json_mode, &value, &t.token);
            Ok(())
        }
        Command::Devices { data } => {
            let server = open(&data)?;
            let devices = admin::devices(&server)?;
            let text = if devices.is_empty() {
                "no devices".to_string()
            } else {
                devices
                    .iter()
                    .map(|d| {
                        format!(
                            "{}  commune {}  {}  last sync {}  seq {}{}{}",
                            d.device_id,
                            d.commune,
                            if d.revoked { "REVOKED" } else { "active" },
                            d.last_sync.map_or("never".to_string(), |t| t.to_string()),
                            d.last_seq,
                            if d.clock_flagged { "  CLOCK OFF" } else { "" },
                            d.blocked.as_ref().map_or(String::new(), |b| format!(
                                "  BLOCKED at change set {} ({})",
                                b.seq, b.code
                            ))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            print_line(json_mode, &json!({"devices": devices}), &text);
            Ok(())
        }
        Command::Revoke { data, device_id } => {
            let server = open(&data)?;
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
    init_logging();
    let json_mode = cli.json;
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
