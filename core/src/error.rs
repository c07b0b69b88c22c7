//! The one public error type of the core, and every conversion into it.
//!
//! **Architecture invariant:** no message carries personal data. Errors name
//! fields, record ids, codes and counts; never names, dates of birth or
//! document numbers. Library errors (SQLite, automerge, the wire decoder)
//! are converted here and nowhere else.

use crvs_schema::FieldProblem;

use crate::crypto::CryptoError;

/// What went wrong, in variants a user interface can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not open this store. Nothing was changed.
    #[error("wrong passphrase: the store could not be unlocked")]
    WrongPassphrase,
    /// A new passphrase (at `init`, or a passphrase change) is too easy
    /// to guess. The reason never repeats the passphrase.
    #[error("the passphrase is too weak: {0}")]
    WeakPassphrase(String),
    /// The registration is invalid; every bad field is listed.
    #[error("the registration is invalid ({} problem(s))", .0.len())]
    InvalidRecord(Vec<FieldProblem>),
    /// The workflow or the store's state does not allow this action.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// No record with this id in the store.
    #[error("no record with this id in the store")]
    NotFound,
    /// The tablet has not been enrolled with a server.
    #[error("this tablet is not enrolled with a server yet")]
    NotEnrolled,
    /// `init` on a folder that already holds a store.
    #[error("a store already exists in this folder")]
    AlreadyInitialized,
    /// `open` on a folder without a store.
    #[error("no store in this folder")]
    NotInitialized,
    /// An argument is malformed (a record id, a commune code, a URL).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The server could not be reached.
    #[error("the server could not be reached: {0}")]
    Offline(String),
    /// The server's TLS certificate is not acceptable: an unknown issuer
    /// (no or the wrong CA given at enrolment), another host name, expired.
    /// Nothing was sent past the handshake; nothing was lost.
    #[error("the server's certificate is not acceptable: {0}")]
    Certificate(String),
    /// The server refused the request or a change set.
    #[error("the server refused: {code}: {message}")]
    ServerRefused {
        /// The server's stable code.
        code: String,
        /// The server's message (no personal data).
        message: String,
    },
    /// The server accepted a later request from this tablet than the one
    /// sent (a store restored from a backup, or a replay by someone else).
    /// The sync continues above the server's counter by itself.
    #[error("the server has accepted a later request from this tablet (counter {0})")]
    CounterBehind(u64),
    /// The server's answer does not verify or does not match the request.
    #[error("the server's answer is not acceptable: {0}")]
    Protocol(String),
    /// The sync was cancelled by its observer.
    #[error("the sync was cancelled")]
    Cancelled,
    /// The database could not be read or written.
    #[error("storage error: {0}")]
    Storage(String),
    /// The store's files are damaged or are not a crvs store.
    #[error("the store is damaged or not a crvs store: {0}")]
    Corrupt(String),
    /// Rows of the store were changed outside crvs (someone edited the
    /// file without the passphrase): it names them, by table and id or
    /// key, never by content. Nothing was sent or changed.
    #[error("the store was changed outside crvs: {}", .0.join(", "))]
    Tampered(Vec<String>),
    /// The device clock is not set: it reads a date before
    /// 2025-01-01 (see `registrar::EARLIEST_CLOCK_MS`). Nothing was stored.
    #[error("the device clock is wrong: it reads a date before 2025-01-01")]
    Clock,
    /// A staff member may not act: not on the roster, without the role, a
    /// wrong or missing PIN, locked. Nothing was stored.
    #[error("{0}")]
    Staff(crate::registrar::StaffError),
}

impl Error {
    /// The stable snake_case code, for JSON output and bindings.
    pub fn code(&self) -> &'static str {
        match self {
            Error::WrongPassphrase => "wrong_passphrase",
            Error::WeakPassphrase(_) => "weak_passphrase",
            Error::InvalidRecord(_) => "invalid_record",
            Error::NotAllowed(_) => "not_allowed",
            Error::NotFound => "not_found",
            Error::NotEnrolled => "not_enrolled",
            Error::AlreadyInitialized => "already_initialized",
            Error::NotInitialized => "not_initialized",
            Error::InvalidInput(_) => "invalid_input",
            Error::Offline(_) => "offline",
            Error::Certificate(_) => "certificate",
            Error::ServerRefused { .. } => "server_refused",
            Error::CounterBehind(_) => "counter_behind",
            Error::Protocol(_) => "protocol",
            Error::Cancelled => "cancelled",
            Error::Storage(_) => "storage",
            Error::Corrupt(_) => "corrupt",
            Error::Tampered(_) => "tampered",
            Error::Clock => "clock",
            Error::Staff(s) => s.code(),
        }
    }

    /// What the user can do about it, in one sentence.
    pub fn hint(&self) -> &'static str {
        match self {
            Error::WrongPassphrase => "Check the passphrase (CRVS_PASSPHRASE) and try again.",
            Error::WeakPassphrase(_) => {
                "Choose a longer passphrase: four or more words that do not belong together, not a name, a date or a saying."
            }
            Error::InvalidRecord(_) => "Correct the fields listed and submit the registration again.",
            Error::NotAllowed(_) => "Check the record's status and who performs the step.",
            Error::NotFound => "Check the record id; `crvs list` shows the records in this store.",
            Error::NotEnrolled => "Enrol the tablet first: `crvs enroll --server URL --token TOKEN`.",
            Error::AlreadyInitialized => "Use the existing store, or choose another folder.",
            Error::NotInitialized => "Create the store first: `crvs init --commune CODE`.",
            Error::InvalidInput(_) => "Check the command's arguments.",
            Error::Offline(_) => "Nothing was lost: sync again when the connection is back.",
            Error::Certificate(_) => {
                "Nothing was sent or lost. Check the server URL, the tablet's clock, and the CA file from the sync operators (`crvs enroll --ca FILE`)."
            }
            Error::ServerRefused { .. } => "Contact the sync operators with this message.",
            Error::CounterBehind(_) => "Sync again; contact the operators if it persists.",
            Error::Protocol(_) => {
                "Nothing was applied: sync again, and contact the operators if it persists."
            }
            Error::Cancelled => "Nothing was lost: sync again to continue.",
            Error::Storage(_) => "Check free space and file permissions, then try again.",
            Error::Corrupt(_) => "Restore the store from a backup, or contact support.",
            Error::Tampered(_) => {
                "Nothing was sent or changed. Keep the tablet as it is and call the district office: someone edited the store's file."
            }
            Error::Clock => "Set the tablet's date and time, then try again. Nothing was stored.",
            Error::Staff(s) => s.hint(),
        }
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => {
                Error::Corrupt("the database file is not a SQLite database".into())
            }
            Some(ErrorCode::DatabaseCorrupt) => Error::Corrupt("the database file is corrupt".into()),
            // A trigger refused to write over a row that fails its MAC
            // (see `integrity`).
            _ if e.to_string().contains(crate::integrity::TAMPERED_MARK) => crate::integrity::classify(e),
            // rusqlite's messages name SQL, tables and columns, never values.
            _ => Error::Storage(e.to_string()),
        }
    }
}

impl From<crate::crypto::WeakPassphrase> for Error {
    fn from(e: crate::crypto::WeakPassphrase) -> Self {
        Error::WeakPassphrase(e.reason)
    }
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::WrongPassphrase => Error::WrongPassphrase,
            other => Error::Corrupt(other.to_string()),
        }
    }
}

impl From<crvs_schema::ValidationError> for Error {
    fn from(e: crvs_schema::ValidationError) -> Self {
        Error::InvalidRecord(e.problems)
    }
}

impl From<crvs_schema::workflow::WorkflowError> for Error {
    fn from(e: crvs_schema::workflow::WorkflowError) -> Self {
        use crvs_schema::workflow::WorkflowError as W;
        match e {
            // A malformed staff id is a bad argument, not a workflow rule.
            W::StaffIdTooLong | W::StaffIdCharacters => Error::InvalidInput(e.to_string()),
            other => Error::NotAllowed(other.to_string()),
        }
    }
}

impl From<crvs_schema::record::RecordError> for Error {
    fn from(e: crvs_schema::record::RecordError) -> Self {
        use crvs_schema::record::RecordError;
        match e {
            RecordError::Workflow(w) => Error::NotAllowed(w.to_string()),
            other => Error::Corrupt(format!("a record document is unreadable: {other}")),
        }
    }
}

impl From<automerge::AutomergeError> for Error {
    fn from(e: automerge::AutomergeError) -> Self {
        Error::Corrupt(format!("a record document is unreadable: {e}"))
    }
}

impl From<crvs_schema::wire::WireError> for Error {
    fn from(e: crvs_schema::wire::WireError) -> Self {
        Error::Protocol(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // io errors carry OS messages and, at most, paths we chose.
        Error::Storage(e.to_string())
    }
}
