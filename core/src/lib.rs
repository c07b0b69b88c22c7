//! `crvs-core`: the tablet engine of the civil registration system.
//!
//! A [`Registrar`] opens an encrypted SQLite store ([`store`], [`crypto`]),
//! keeps each vital event as an automerge document, runs the registration
//! workflow, batches changes into signed change sets in a durable outbox,
//! and syncs them with the server ([`sync`], [`transport`]).
//!
//! The library needs no async runtime: every call blocks. The `cli`
//! feature adds the registrar command-line client `crvs`.
//!
//! **Architecture invariant:** no personal data reaches SQLite unencrypted,
//! and none appears in an error, a log line or a panic message.

pub mod crypto;
pub mod error;
pub mod fault;
pub mod integrity;
pub mod registrar;
pub mod store;
pub mod sync;
pub mod transport;

pub use crvs_schema::FieldProblem;
pub use crvs_schema::event;
pub use crvs_schema::workflow::Status;
pub use crypto::Passphrase;
pub use error::{Error, Result};
pub use registrar::{Actor, Enrollment, Record, RecordId, RecordSummary, Registrar, RepairReport, SyncState};
pub use sync::{Quiet, SyncObserver, SyncPhase, SyncProgress, SyncReport};
pub use transport::{HttpTransport, Transport};
