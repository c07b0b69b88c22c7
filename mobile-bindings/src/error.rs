//! [`CrvsError`], the one error that crosses the FFI boundary, and the one
//! place where the core's errors are converted into it.
//!
//! **Architecture invariant:** no variant carries personal data. The
//! messages are the core's (ids, field paths, codes and counts), and a
//! foreign callback's exception text is not carried across at all.

/// A bad field of a registration: its dotted path and what is wrong with
/// it. Never contains the field's value.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct FieldProblem {
    /// Dotted path of the field, e.g. `child.sex` (`$` for the whole document).
    pub field: String,
    /// What is wrong, e.g. "is required".
    pub problem: String,
}

impl From<crvs_core::FieldProblem> for FieldProblem {
    fn from(p: crvs_core::FieldProblem) -> Self {
        FieldProblem {
            field: p.field,
            problem: p.problem,
        }
    }
}

/// What went wrong, in variants a user interface can act on.
///
/// Kotlin sees it as `CrvsException` (`CrvsException.WrongPassphrase`, ...),
/// Swift as `CrvsError`, Python as `CrvsError` (`CrvsError.WrongPassphrase`).
/// In Kotlin the `message` fields of `ServerRefused` and `Storage` are
/// called `detail`, since every exception has a `message` already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum CrvsError {
    /// The passphrase does not open this store. Nothing was changed: ask
    /// for the passphrase again.
    #[error("wrong passphrase: the store could not be unlocked")]
    WrongPassphrase,
    /// The registration is invalid; every bad field is listed. Nothing was
    /// stored: show the problems next to their fields.
    #[error("the registration is invalid ({} problem(s))", problems.len())]
    InvalidRecord {
        /// Every bad field.
        problems: Vec<FieldProblem>,
    },
    /// The workflow or the store's state does not allow this action, e.g.
    /// the verifier is the clerk who entered the record.
    #[error("not allowed: {reason}")]
    NotAllowed {
        /// Why, without personal data.
        reason: String,
    },
    /// The server could not be reached. Nothing was lost: sync again when
    /// the connection is back.
    #[error("the server could not be reached: {reason}")]
    Offline {
        /// The transport's cause (a host, an I/O error).
        reason: String,
    },
    /// The server's TLS certificate is not trusted (an unknown issuer:
    /// no or the wrong CA at enrolment; another host name; expired or the
    /// tablet's clock is wrong). Nothing was sent or lost; retrying will not
    /// help until the operators or the tablet's settings fix it.
    #[error("the server's certificate is not acceptable: {reason}")]
    Certificate {
        /// What is wrong with the certificate (no personal data).
        reason: String,
    },
    /// The server refused the request or a change set.
    #[error("the server refused: {code}: {message}")]
    ServerRefused {
        /// The server's stable code, e.g. `device_revoked`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The database could not be read or written: check free space.
    #[error("storage error: {message}")]
    Storage {
        /// SQLite's or the OS's message (names tables and columns, never values).
        message: String,
    },
    /// No record with this id in the store.
    #[error("no record with this id in the store")]
    NotFound,
    /// The tablet is not enrolled with a server yet: call `enroll` first.
    #[error("this tablet is not enrolled with a server yet")]
    NotEnrolled,
    /// `Registrar.init` on a folder that already holds a store: open it.
    #[error("a store already exists in this folder")]
    AlreadyInitialized,
    /// `Registrar.open` on a folder without a store: create it with `init`.
    #[error("no store in this folder")]
    NotInitialized,
    /// An argument is malformed (a record id, a commune code, a URL, an
    /// empty passphrase or token).
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// Which argument and what is expected.
        reason: String,
    },
    /// The server's answer does not verify or does not match the request.
    /// Nothing of it was applied: sync again later.
    #[error("the server's answer is not acceptable: {reason}")]
    Protocol {
        /// What did not match.
        reason: String,
    },
    /// The sync was cancelled. Nothing was lost: sync again to continue.
    #[error("the sync was cancelled")]
    Cancelled,
    /// The progress callback threw. The sync stopped cleanly after its
    /// last stored step; sync again to continue.
    #[error("the sync progress callback failed; the sync stopped")]
    CallbackFailed,
    /// The store's files are damaged or are not a crvs store: restore
    /// from a backup.
    #[error("the store is damaged or not a crvs store: {reason}")]
    Corrupt {
        /// What could not be read.
        reason: String,
    },
    /// An error this version of the bindings does not know yet.
    #[error("{code}: {reason}")]
    Other {
        /// The core's stable code.
        code: String,
        /// The core's message.
        reason: String,
    },
    // Variants added later go below, so that earlier ones keep their
    // position in the generated bindings.
    /// A new passphrase (`init`, `change_passphrase`) is too easy to
    /// guess. Nothing was created or changed: show the reason and ask for
    /// a longer one.
    #[error("the passphrase is too weak: {reason}")]
    WeakPassphrase {
        /// What is wrong and what would help (never the passphrase).
        reason: String,
    },
    /// Rows of the store were changed outside the app (someone edited its
    /// file without the passphrase). Nothing was sent or changed: keep the
    /// tablet as it is and call the district office.
    #[error("the store was changed outside crvs: {}", .rows.join(", "))]
    Tampered {
        /// The rows, by table and id or key (never their content).
        rows: Vec<String>,
    },
    /// The staff member may not act: `code` is `not_on_roster`,
    /// `role_missing`, `pin_required`, `wrong_pin` (`tries_left` says how
    /// many wrong PINs remain before the lock), `staff_locked` (a
    /// registrar unlocks them) or `weak_pin`. Nothing was stored.
    #[error("{reason}")]
    Staff {
        /// The stable code.
        code: String,
        /// What is wrong (staff ids and counts, never a PIN).
        reason: String,
        /// For `wrong_pin`: wrong PINs left before the lock; else 0.
        tries_left: u32,
    },
}

impl From<crvs_core::Error> for CrvsError {
    fn from(e: crvs_core::Error) -> Self {
        use crvs_core::Error as E;
        match e {
            E::WrongPassphrase => CrvsError::WrongPassphrase,
            E::WeakPassphrase(reason) => CrvsError::WeakPassphrase { reason },
            E::InvalidRecord(problems) => CrvsError::InvalidRecord {
                problems: problems.into_iter().map(FieldProblem::from).collect(),
            },
            E::NotAllowed(reason) => CrvsError::NotAllowed { reason },
            E::Offline(reason) => CrvsError::Offline { reason },
            E::Certificate(reason) => CrvsError::Certificate { reason },
            E::ServerRefused { code, message } => CrvsError::ServerRefused { code, message },
            E::Storage(message) => CrvsError::Storage { message },
            E::NotFound => CrvsError::NotFound,
            E::NotEnrolled => CrvsError::NotEnrolled,
            E::AlreadyInitialized => CrvsError::AlreadyInitialized,
            E::NotInitialized => CrvsError::NotInitialized,
            E::InvalidInput(reason) => CrvsError::InvalidInput { reason },
            E::Protocol(reason) => CrvsError::Protocol { reason },
            E::Cancelled => CrvsError::Cancelled,
            E::Corrupt(reason) => CrvsError::Corrupt { reason },
            E::Tampered(rows) => CrvsError::Tampered { rows },
            E::Staff(s) => CrvsError::Staff {
                code: s.code().to_string(),
                reason: s.to_string(),
                tries_left: match &s {
                    crvs_core::registrar::StaffError::WrongPin { tries_left, .. } => *tries_left,
                    _ => 0,
                },
            },
            other => CrvsError::Other {
                code: other.code().to_string(),
                reason: other.to_string(),
            },
        }
    }
}

/// A foreign progress callback threw something other than a `CrvsError`
/// (a Kotlin `RuntimeException`, a Python `ValueError`, ...). Its text is
/// the app's own and may hold anything, so it is not carried over.
impl From<uniffi::UnexpectedUniFFICallbackError> for CrvsError {
    fn from(_: uniffi::UnexpectedUniFFICallbackError) -> Self {
        CrvsError::CallbackFailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_error_keeps_its_variant_and_its_fields() {
        use crvs_core::Error as E;
        let problem = crvs_core::FieldProblem::new("child.sex", "is required");
        let cases = [
            (E::WrongPassphrase, CrvsError::WrongPassphrase),
            (
                E::WeakPassphrase("Add another word or two.".into()),
                CrvsError::WeakPassphrase {
                    reason: "Add another word or two.".into(),
                },
            ),
            (
                E::InvalidRecord(vec![problem]),
                CrvsError::InvalidRecord {
                    problems: vec![FieldProblem {
                        field: "child.sex".into(),
                        problem: "is required".into(),
                    }],
                },
            ),
            (
                E::NotAllowed("same person".into()),
                CrvsError::NotAllowed {
                    reason: "same person".into(),
                },
            ),
            (
                E::Offline("refused".into()),
                CrvsError::Offline {
                    reason: "refused".into(),
                },
            ),
            (
                E::Certificate("unknown issuer".into()),
                CrvsError::Certificate {
                    reason: "unknown issuer".into(),
                },
            ),
            (
                E::ServerRefused {
                    code: "device_revoked".into(),
                    message: "revoked".into(),
                },
                CrvsError::ServerRefused {
                    code: "device_revoked".into(),
                    message: "revoked".into(),
                },
            ),
            (
                E::Storage("disk full".into()),
                CrvsError::Storage {
                    message: "disk full".into(),
                },
            ),
            (E::NotFound, CrvsError::NotFound),
            (E::NotEnrolled, CrvsError::NotEnrolled),
            (E::AlreadyInitialized, CrvsError::AlreadyInitialized),
            (E::NotInitialized, CrvsError::NotInitialized),
            (
                E::InvalidInput("bad id".into()),
                CrvsError::InvalidInput {
                    reason: "bad id".into(),
                },
            ),
            (
                E::Protocol("bad answer".into()),
                CrvsError::Protocol {
                    reason: "bad answer".into(),
                },
            ),
            (E::Cancelled, CrvsError::Cancelled),
            (
                E::Corrupt("bad file".into()),
                CrvsError::Corrupt {
                    reason: "bad file".into(),
                },
            ),
            (
                E::Tampered(vec!["records 0190".into(), "integrity".into()]),
                CrvsError::Tampered {
                    rows: vec!["records 0190".into(), "integrity".into()],
                },
            ),
        ];
        for (core, expected) in cases {
            assert_eq!(CrvsError::from(core), expected);
        }
    }

    #[test]
    fn a_foreign_exception_becomes_callback_failed_without_its_text() {
        let e = CrvsError::from(uniffi::UnexpectedUniFFICallbackError::new(
            "ValueError('SOK DARA')",
        ));
        assert_eq!(e, CrvsError::CallbackFailed);
        assert!(!e.to_string().contains("SOK"));
    }
}
