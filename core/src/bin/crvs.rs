//! `crvs`: the registrar command-line client, built on [`crvs_core::Registrar`].
//!
//! `--store DIR` and `--json` are global flags, accepted anywhere on the
//! command line. With `--json` every command prints exactly one JSON object
//! on stdout; on failure it is `{"error": CODE, "message": TEXT}` (plus
//! `"problems"` for an invalid registration), and the exit status is
//! non-zero. The passphrase comes only from the environment variable
//! `CRVS_PASSPHRASE` (and a new one, for `crvs passphrase change`, from
//! `CRVS_NEW_PASSPHRASE`). It goes straight from the variable's `String`
//! into a zeroizing [`Passphrase`]; the process's environment block keeps
//! its own copy, which we do not control.
//!
//! A staff member who acts (`--by S` on every acting command) proves who
//! they are with their PIN, from the environment variable `CRVS_PIN`,
//! never from the command line (other users of the machine can read a
//! command line). It is asked once the office's roster is in force (see
//! `crvs staff list`).

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crvs_core::event::EventKind;
use crvs_core::registrar::Settlement;
use crvs_core::{Actor, Error, FieldProblem, Passphrase, RecordId, Registrar, SyncPhase, SyncProgress};
use serde_json::{Value as Json, json};
use zeroize::{Zeroize, Zeroizing};

/// The environment variable that holds the store passphrase.
const PASSPHRASE_ENV: &str = "CRVS_PASSPHRASE";
/// The environment variable that holds the new passphrase for
/// `crvs passphrase change`.
const NEW_PASSPHRASE_ENV: &str = "CRVS_NEW_PASSPHRASE";
/// The environment variable that holds the acting staff member's PIN.
const PIN_ENV: &str = "CRVS_PIN";
/// The environment variable that holds the new PIN for `crvs staff set-pin`.
const NEW_PIN_ENV: &str = "CRVS_NEW_PIN";

#[derive(Parser)]
#[command(
    name = "crvs",
    version,
    about = "Registrar client for offline civil registration"
)]
struct Cli {
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// The store folder.
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new encrypted store for a commune office.
    Init {
        /// The office's 6-digit gazetteer commune code.
        #[arg(long)]
        commune: String,
    },
    /// Enrol this store with a server, using a one-time token.
    Enroll {
        /// The server's base URL, e.g. https://sync.example.gov.kh.
        #[arg(long)]
        server: String,
        /// The one-time enrolment token from the sync operators.
        #[arg(long)]
        token: String,
        /// The CA certificate (PEM file) from the sync operators, when the
        /// server's certificate is not issued by a public web authority.
        /// Stored with the enrolment and trusted for every sync.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
    /// Birth registrations.
    Birth {
        #[command(subcommand)]
        command: BirthCommand,
    },
    /// Death registrations.
    Death {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Marriage registrations.
    Marriage {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Divorce registrations.
    Divorce {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Adoption registrations.
    Adoption {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Amend an approved or registered birth record: the amendment is a
    /// record of its own, verified and approved like any other.
    Amend {
        /// The id of the birth record to amend.
        id: String,
        /// The amendment JSON file (`changes`, `reason`, `remarks`).
        file: PathBuf,
        /// The entering clerk's staff id.
        #[arg(long)]
        by: String,
    },
    /// Correct a rejected record and resubmit it: the whole registration
    /// from a file, checked as at registration. The record keeps its id
    /// and its history.
    Correct {
        /// The record id.
        id: String,
        /// The corrected registration JSON file.
        file: PathBuf,
        /// The correcting clerk's staff id.
        #[arg(long)]
        by: String,
    },
    /// Verify a record (a different staff member from the one who entered it).
    Verify {
        /// The record id.
        id: String,
        /// The verifying staff member's id.
        #[arg(long)]
        by: String,
    },
    /// Approve a verified record.
    Approve {
        /// The record id.
        id: String,
        /// The approving registrar's staff id.
        #[arg(long)]
        by: String,
    },
    /// Reject a record, with a reason.
    Reject {
        /// The record id.
        id: String,
        /// The rejecting staff member's id.
        #[arg(long)]
        by: String,
        /// Why (printed on the rejection notice).
        #[arg(long)]
        reason: String,
        /// The reason's code, from the server's list (`crvs staff list`
        /// shows it); `other` when not given.
        #[arg(long, default_value = "other")]
        code: String,
    },
    /// Settle a record two tablets of the office wrote at once: a
    /// registrar chooses its data (`--take N`, the value numbered N of
    /// `conflicting_data` in `crvs show`, or FILE, a whole registration).
    /// It is then verified and approved again.
    Settle {
        /// The record id.
        id: String,
        /// A whole registration to settle it with.
        #[arg(required_unless_present = "take", conflicts_with = "take")]
        file: Option<PathBuf>,
        /// The number (from 0) of the conflicting value to keep.
        #[arg(long)]
        take: Option<usize>,
        /// The settling registrar's staff id.
        #[arg(long)]
        by: String,
    },
    /// The office's staff on this tablet: the roster, PINs, locks.
    Staff {
        #[command(subcommand)]
        command: StaffCommand,
    },
    /// Push pending changes to the server and pull its updates.
    Sync,
    /// The birth and death notifications of the office (from health
    /// facilities and courts) not registered yet, as of the last sync.
    Notifications,
    /// Show one record.
    Show {
        /// The record id.
        id: String,
    },
    /// List the records (no personal data).
    List,
    /// Check that every record and change set in the store decrypts, that
    /// the outbox's hash chain is intact, and that no row was changed
    /// outside crvs (it names the rows that were).
    Check,
    /// Rebuild the rows `check` names from the store's sealed data, and
    /// reset what the server's answers re-establish (for the district
    /// office, after a `tampered` error). Rows only an enrolment can set
    /// are reported, not rebuilt.
    Repair {
        /// The staff id of who repairs it (recorded in the log).
        #[arg(long)]
        by: String,
    },
    /// The store passphrase.
    Passphrase {
        #[command(subcommand)]
        command: PassphraseCommand,
    },
}

#[derive(Subcommand)]
enum StaffCommand {
    /// The roster as this tablet last received it (no PIN hashes), who is
    /// locked, and the rejection codes.
    List,
    /// Change a staff member's PIN on this tablet: the current one from
    /// CRVS_PIN, the new one from CRVS_NEW_PIN.
    SetPin {
        /// The staff id.
        staff: String,
    },
    /// Unlock a staff member locked after 5 wrong PINs, by a registrar
    /// (whose PIN is in CRVS_PIN).
    Unlock {
        /// The locked staff member's id.
        staff: String,
        /// The unlocking registrar's staff id.
        #[arg(long)]
        by: String,
    },
}

#[derive(Subcommand)]
enum PassphraseCommand {
    /// Change the store passphrase: the current one from CRVS_PASSPHRASE,
    /// the new one from CRVS_NEW_PASSPHRASE (it must be as strong as at
    /// `init`). Afterwards only the new one opens the store.
    Change,
}

#[derive(Subcommand)]
enum BirthCommand {
    /// Register a birth from a JSON file.
    Register {
        /// The registration JSON file.
        file: PathBuf,
        /// The entering clerk's staff id.
        #[arg(long)]
        by: String,
        /// The id of the birth notification this registration answers
        /// (`crvs notifications` lists them).
        #[arg(long, value_name = "NID")]
        notification: Option<String>,
    },
}

#[derive(Subcommand)]
enum EventCommand {
    /// Register the event from a JSON file.
    Register {
        /// The registration JSON file.
        file: PathBuf,
        /// The entering clerk's staff id.
        #[arg(long)]
        by: String,
        /// The id of the death notification this registration answers
        /// (`crvs notifications` lists them).
        #[arg(long, value_name = "NID")]
        notification: Option<String>,
    },
}

/// A failure, ready to print.
struct Failure {
    code: &'static str,
    message: String,
    hint: &'static str,
    problems: Vec<FieldProblem>,
    /// The rows that failed their check (`tampered`): table and id or key.
    rows: Vec<String>,
    exit: u8,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let problems = match &e {
            Error::InvalidRecord(p) => p.clone(),
            _ => Vec::new(),
        };
        let rows = match &e {
            Error::Tampered(rows) => rows.clone(),
            _ => Vec::new(),
        };
        Failure {
            code: e.code(),
            message: e.to_string(),
            hint: e.hint(),
            problems,
            rows,
            exit: 1,
        }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: "usage",
        message: message.into(),
        hint: "Run `crvs --help` for the commands and their arguments.",
        problems: Vec::new(),
        rows: Vec::new(),
        exit: 2,
    }
}

/// A successful result: the JSON object and its human-readable form.
struct Output {
    json: Json,
    text: String,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let json_requested = args.iter().skip(1).any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if json_requested {
                let msg = e.kind().to_string();
                let f = usage(format!("invalid command line: {msg}"));
                let _ = e.print();
                print_failure(&f, true);
                return ExitCode::from(f.exit);
            }
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crvs_core::fault::check_env() {
        // Only tests arm fault points; a misspelt one must not pass unseen.
        print_failure(&usage(e), cli.json);
        return ExitCode::from(2);
    }
    match run(&cli) {
        Ok(out) => {
            if cli.json {
                println!("{}", out.json);
            } else {
                println!("{}", out.text);
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            print_failure(&f, cli.json);
            ExitCode::from(f.exit)
        }
    }
}

fn print_failure(f: &Failure, json: bool) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {}", f.message);
    for p in &f.problems {
        let _ = writeln!(stderr, "  - {}: {}", p.field, p.problem);
    }
    let _ = writeln!(stderr, "{}", f.hint);
    if json {
        let mut obj = json!({ "error": f.code, "message": f.message });
        if !f.problems.is_empty() {
            obj["problems"] = json!(f.problems);
        }
        if !f.rows.is_empty() {
            obj["rows"] = json!(f.rows);
        }
        println!("{obj}");
    }
}

/// Reads a passphrase from the environment variable `var`, moving the
/// variable's `String` into a zeroizing [`Passphrase`] without a copy.
fn env_passphrase(var: &'static str) -> Result<Passphrase, Failure> {
    match std::env::var(var) {
        Ok(p) if !p.is_empty() => Ok(Passphrase::new(p)),
        Ok(_) => Err(passphrase_missing(var)),
        Err(std::env::VarError::NotPresent) => Err(passphrase_missing(var)),
        Err(std::env::VarError::NotUnicode(os)) => {
            os.into_encoded_bytes().zeroize();
            Err(Failure::from(Error::InvalidInput(format!(
                "the environment variable {var} is not valid UTF-8"
            ))))
        }
    }
}

fn passphrase_missing(var: &'static str) -> Failure {
    Failure {
        code: "passphrase_missing",
        message: format!("the store passphrase is not set: put it in the environment variable {var}"),
        hint: "The passphrase is never taken from the command line.",
        problems: Vec::new(),
        rows: Vec::new(),
        exit: 1,
    }
}

fn passphrase() -> Result<Passphrase, Failure> {
    env_passphrase(PASSPHRASE_ENV)
}

fn store_dir(cli: &Cli) -> Result<PathBuf, Failure> {
    cli.store
        .clone()
        .ok_or_else(|| usage("the store folder is required: pass --store DIR"))
}

fn open(cli: &Cli) -> Result<Registrar, Failure> {
    let dir = store_dir(cli)?;
    let pass = passphrase()?;
    Ok(Registrar::open(dir, &pass)?)
}

fn record_id(s: &str) -> Result<RecordId, Failure> {
    Ok(RecordId::parse(s)?)
}

fn run(cli: &Cli) -> Result<Output, Failure> {
    match &cli.command {
        Command::Init { commune } => {
            let dir = store_dir(cli)?;
            let pass = passphrase()?;
            let r = Registrar::init(&dir, &pass, commune)?;
            Ok(Output {
                json: json!({ "store": dir.display().to_string(), "office": r.office() }),
                text: format!(
                    "Created a store for office {} in {}. Next: enrol it with `crvs enroll`.",
                    r.office(),
                    dir.display()
                ),
            })
        }
        Command::Enroll { server, token, ca } => {
            let ca_pem = match ca {
                None => None,
                Some(path) => Some(std::fs::read(path).map_err(|e| Failure {
                    code: "invalid_input",
                    message: format!("cannot read the CA file {}: {e}", path.display()),
                    hint: "Check the path of the CA file from the sync operators.",
                    problems: Vec::new(),
                    rows: Vec::new(),
                    exit: 1,
                })?),
            };
            let ca_pem = match ca_pem {
                None => None,
                Some(bytes) => Some(String::from_utf8(bytes).map_err(|_| {
                    Failure::from(Error::InvalidInput("the CA file is not a PEM certificate".into()))
                })?),
            };
            let r = open(cli)?;
            let e = r.enroll(server, token, ca_pem.as_deref())?;
            Ok(Output {
                json: json!({ "device_id": e.device_id, "office": e.office }),
                text: format!("Enrolled as device {} for office {}.", e.device_id, e.office),
            })
        }
        Command::Death {
            command:
                EventCommand::Register {
                    file,
                    by,
                    notification,
                },
        } => register(cli, EventKind::Death, file, by, notification.as_deref()),
        Command::Marriage {
            command:
                EventCommand::Register {
                    file,
                    by,
                    notification,
                },
        } => register(cli, EventKind::Marriage, file, by, notification.as_deref()),
        Command::Divorce {
            command:
                EventCommand::Register {
                    file,
                    by,
                    notification,
                },
        } => register(cli, EventKind::Divorce, file, by, notification.as_deref()),
        Command::Adoption {
            command:
                EventCommand::Register {
                    file,
                    by,
                    notification,
                },
        } => register(cli, EventKind::Adoption, file, by, notification.as_deref()),
        Command::Amend { id, file, by } => {
            let target = record_id(id)?;
            let text = read_file(file)?;
            let r = open(cli)?;
            let pin = env_pin(PIN_ENV)?;
            let amendment = r.amend(&target, &text, actor(by, &pin))?;
            Ok(Output {
                json: json!({ "record_id": target.to_string(), "amendment_id": amendment.to_string(), "status": "submitted" }),
                text: format!(
                    "Amendment {amendment} of record {target} entered (submitted; a second staff member must verify it)."
                ),
            })
        }
        Command::Birth {
            command:
                BirthCommand::Register {
                    file,
                    by,
                    notification,
                },
        } => {
            let text = read_file(file)?;
            let r = open(cli)?;
            let pin = env_pin(PIN_ENV)?;
            let id = r.register_event_for(
                &text,
                actor(by, &pin),
                Some(EventKind::Birth),
                notification.as_deref(),
            )?;
            Ok(Output {
                json: json!({ "record_id": id.to_string(), "status": "submitted" }),
                text: format!(
                    "Registered birth record {id} (submitted; a second staff member must verify it)."
                ),
            })
        }
        Command::Correct { id, file, by } => {
            let text = read_file(file)?;
            let pin = env_pin(PIN_ENV)?;
            step(cli, id, |r, id| r.correct(id, &text, actor(by, &pin)))
        }
        Command::Settle { id, file, take, by } => {
            let text = match file {
                Some(f) => Some(read_file(f)?),
                None => None,
            };
            let choice = match (&text, take) {
                (Some(t), _) => Settlement::Data(t),
                (None, Some(i)) => Settlement::Take(*i),
                (None, None) => return Err(usage("give --take N or a FILE")),
            };
            let pin = env_pin(PIN_ENV)?;
            step(cli, id, |r, id| r.settle(id, choice, actor(by, &pin)))
        }
        Command::Verify { id, by } => {
            let pin = env_pin(PIN_ENV)?;
            step(cli, id, |r, id| r.verify(id, actor(by, &pin)))
        }
        Command::Approve { id, by } => {
            let pin = env_pin(PIN_ENV)?;
            step(cli, id, |r, id| r.approve(id, actor(by, &pin)))
        }
        Command::Reject { id, by, reason, code } => {
            let pin = env_pin(PIN_ENV)?;
            step(cli, id, |r, id| {
                r.reject_with_code(id, actor(by, &pin), code, reason)
            })
        }
        Command::Staff {
            command: StaffCommand::List,
        } => {
            let r = open(cli)?;
            let roster = r.roster_json()?;
            let mut text = format!(
                "Roster of office {} ({}):\n",
                r.office(),
                if roster["enforced"] == true {
                    "in force: staff act with their PIN"
                } else {
                    "not in force: no staff on the server's roster yet"
                }
            );
            for m in roster["staff"].as_array().into_iter().flatten() {
                text.push_str(&format!(
                    "{}  {}{}\n",
                    m["staff_id"].as_str().unwrap_or(""),
                    m["roles"]
                        .as_array()
                        .map(|r| r.iter().filter_map(Json::as_str).collect::<Vec<_>>().join(","))
                        .unwrap_or_default(),
                    if m["locked"] == true { "  LOCKED" } else { "" }
                ));
            }
            Ok(Output {
                json: roster,
                text: text.trim_end().to_string(),
            })
        }
        Command::Staff {
            command: StaffCommand::SetPin { staff },
        } => {
            let old = env_pin(PIN_ENV)?.ok_or_else(|| usage(format!("set {PIN_ENV} to the current PIN")))?;
            let new =
                env_pin(NEW_PIN_ENV)?.ok_or_else(|| usage(format!("set {NEW_PIN_ENV} to the new PIN")))?;
            let r = open(cli)?;
            r.set_staff_pin(staff, &old, &new)?;
            Ok(Output {
                json: json!({ "staff_id": staff.trim(), "pin_changed": true }),
                text: format!("The PIN of staff {} is changed on this tablet.", staff.trim()),
            })
        }
        Command::Staff {
            command: StaffCommand::Unlock { staff, by },
        } => {
            let pin = env_pin(PIN_ENV)?;
            let r = open(cli)?;
            r.unlock_staff(staff, actor(by, &pin))?;
            Ok(Output {
                json: json!({ "staff_id": staff.trim(), "unlocked": true }),
                text: format!("Staff {} is unlocked on this tablet.", staff.trim()),
            })
        }
        Command::Sync => {
            let r = open(cli)?;
            let show = !cli.json && std::io::stderr().is_terminal();
            let observer = move |p: SyncProgress| {
                if show {
                    let line = match p.phase {
                        SyncPhase::Preparing => format!("preparing: {} change set(s) to push", p.total),
                        SyncPhase::Pushing => format!("pushing {}/{} change sets", p.pushed, p.total),
                        SyncPhase::Pulling => format!(
                            "pushed {}/{} change sets, pulled {} record update(s)",
                            p.pushed, p.total, p.pulled
                        ),
                        SyncPhase::Done => "done".to_string(),
                    };
                    eprintln!("{line}");
                }
                ControlFlow::Continue(())
            };
            let report = r.sync(&observer)?;
            let json = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
            Ok(Output {
                text: format!(
                    "Sync complete: {} change set(s) pushed ({} record(s)), {} record update(s) pulled, {} KIdC(s) received, {} change set(s) still pending.",
                    report.pushed,
                    report.records_pushed,
                    report.pulled,
                    report.kidcs_received,
                    report.pending
                ),
                json,
            })
        }
        Command::Show { id } => {
            let r = open(cli)?;
            let json: Json = serde_json::from_str(&r.record_json(&record_id(id)?)?)
                .map_err(|e| Failure::from(Error::Storage(e.to_string())))?;
            Ok(Output {
                text: serde_json::to_string_pretty(&json).unwrap_or_default(),
                json,
            })
        }
        Command::Notifications => {
            let r = open(cli)?;
            let list = r.notifications()?;
            let mut text = format!("{} pending notification(s)\n", list.len());
            for n in &list {
                text.push_str(&format!(
                    "{}  {:<5}  received {}\n",
                    n["notification_id"].as_str().unwrap_or(""),
                    n["kind"].as_str().unwrap_or(""),
                    crvs_core::registrar::format_utc(n["received_at_ms"].as_i64().unwrap_or(0))
                ));
            }
            Ok(Output {
                json: json!({ "notifications": list }),
                text: text.trim_end().to_string(),
            })
        }
        Command::List => {
            let r = open(cli)?;
            let records = r.list()?;
            let json: Json = serde_json::from_str(&r.list_json()?)
                .map_err(|e| Failure::from(Error::Storage(e.to_string())))?;
            let mut text = format!("{} record(s)\n", records.len());
            for s in &records {
                text.push_str(&format!(
                    "{}  {:<6} {:<10} {:<8} {}\n",
                    s.id,
                    s.kind,
                    s.status,
                    s.sync_state.as_str(),
                    s.kidc.as_deref().unwrap_or("")
                ));
            }
            Ok(Output {
                json,
                text: text.trim_end().to_string(),
            })
        }
        Command::Check => {
            let r = open(cli)?;
            let n = r.check()?;
            Ok(Output {
                json: json!({ "ok": true, "records": n }),
                text: format!("The store is consistent: {n} record(s) checked."),
            })
        }
        Command::Repair { by } => {
            let r = open(cli)?;
            let report = r.repair(by)?;
            let ok = report.unrecoverable.is_empty();
            let text = if report.repaired.is_empty() && ok {
                "Nothing to repair: the store is consistent.".to_string()
            } else {
                let mut t = format!(
                    "Repaired {} row(s); sync to send them again.",
                    report.repaired.len()
                );
                if !ok {
                    t.push_str(&format!(
                        "\nNot repairable ({}): {}. Enrol the tablet again.",
                        report.unrecoverable.len(),
                        report.unrecoverable.join(", ")
                    ));
                }
                t
            };
            Ok(Output {
                json: json!({ "ok": ok, "repaired": report.repaired, "unrecoverable": report.unrecoverable }),
                text,
            })
        }
        Command::Passphrase {
            command: PassphraseCommand::Change,
        } => {
            let dir = store_dir(cli)?;
            let old = passphrase()?;
            let new = env_passphrase(NEW_PASSPHRASE_ENV)?;
            let r = Registrar::open(&dir, &old)?;
            r.change_passphrase(&old, &new)?;
            let kdf = r.kdf_params()?;
            Ok(Output {
                json: json!({ "changed": true, "kdf": kdf.encode() }),
                text: format!(
                    "The passphrase of the store in {} is changed: only the new one opens it now. Put it in {PASSPHRASE_ENV}.",
                    dir.display()
                ),
            })
        }
    }
}

/// A PIN from the environment variable `name`, in a zeroizing string.
fn env_pin(name: &str) -> Result<Option<Zeroizing<String>>, Failure> {
    match std::env::var(name) {
        Ok(s) => Ok(Some(Zeroizing::new(s))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(usage(format!("{name} must hold digits only"))),
    }
}

/// The staff member `by`, with the PIN if one was given.
fn actor<'a>(by: &'a str, pin: &'a Option<Zeroizing<String>>) -> Actor<'a> {
    Actor::new(by, pin.as_ref().map(|p| p.as_str()))
}

fn read_file(file: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|e| Failure {
        code: "invalid_input",
        message: format!("cannot read the registration file {}: {e}", file.display()),
        hint: "Check the file's path and that it is UTF-8 JSON.",
        problems: Vec::new(),
        rows: Vec::new(),
        exit: 1,
    })
}

/// `crvs KIND register FILE --by S` for the events other than births.
fn register(
    cli: &Cli,
    kind: EventKind,
    file: &std::path::Path,
    by: &str,
    notification: Option<&str>,
) -> Result<Output, Failure> {
    let text = read_file(file)?;
    let r = open(cli)?;
    let pin = env_pin(PIN_ENV)?;
    let id = r.register_event_for(&text, actor(by, &pin), Some(kind), notification)?;
    Ok(Output {
        json: json!({ "record_id": id.to_string(), "status": "submitted" }),
        text: format!(
            "Registered {} record {id} (submitted; a second staff member must verify it).",
            kind.as_str()
        ),
    })
}

fn step(
    cli: &Cli,
    id: &str,
    f: impl FnOnce(&Registrar, &RecordId) -> crvs_core::Result<crvs_core::Status>,
) -> Result<Output, Failure> {
    let id = record_id(id)?;
    let r = open(cli)?;
    let status = f(&r, &id)?;
    Ok(Output {
        json: json!({ "record_id": id.to_string(), "status": status.as_str() }),
        text: format!("Record {id} is now {status}."),
    })
}
