//! `crvs-schema`: the shared vocabulary of the civil registration system.
//!
//! Domain types and their validation ([`birth`], the other vital events
//! in [`event`], [`date`], [`gazetteer`]; the notifications of births and
//! deaths that institutions send, in [`notification`]),
//! the Khmer Identification Code ([`kidc`]) and the server's signed
//! evidence of an issued one ([`evidence`]), the workflow rules
//! ([`workflow`]), which characters names and ids may not hold
//! ([`text`]), the layout of a record's automerge document ([`record`])
//! and the sync protocol's wire format ([`wire`]).
//!
//! **Architecture invariant:** this crate does no I/O. It never touches a
//! file, a socket or a clock: callers pass "now" and randomness in.

pub mod birth;
pub mod bounds;
pub mod date;
pub mod enrol;
pub mod event;
pub mod evidence;
pub mod gazetteer;
pub mod kidc;
pub mod notification;
pub mod par;
pub mod record;
pub mod staff;
pub mod text;
mod validation;

#[cfg(test)]
mod test_support;
pub mod wire;
pub mod workflow;

pub use birth::{BirthRegistration, FieldProblem, ValidationError};
pub use date::Date;
pub use event::Event;
pub use gazetteer::GazetteerCode;
pub use kidc::Kidc;
