//! The `crvs` process's named fault points, for crash tests: armed by
//! `CRVS_FAULT=<point>[:<n>]` in its environment, and only there (the
//! mechanism, shared with the other program, is [`crvs_fault`]).
//!
//! The tablet's points, in the order a sync reaches them:
//!
//! - `before_outbox_commit`: the new change sets are built, signed and
//!   inserted into the outbox, just before that transaction commits
//!   (`Registrar::fill_outbox`). After the crash nothing of them exists.
//! - `after_answer`: the server's answer arrived (the server committed it),
//!   before it is checked and the acknowledgement transaction is stored.
//!   After the crash the tablet resends change sets the server already has.

use crvs_fault::FaultPoints;
pub use crvs_fault::{ENV, abort_at};

/// The tablet's fault points (see the module documentation).
pub const POINTS: &[&str] = &["before_outbox_commit", "after_answer"];

static FAULTS: FaultPoints = FaultPoints::new(POINTS);

/// Reads `CRVS_FAULT` at start, refusing a point this program does not
/// have (see [`crvs_fault::FaultPoints::check_env`]).
pub fn check_env() -> Result<(), String> {
    FAULTS.check_env()
}

/// Whether this is the armed hit of `point` (see
/// [`crvs_fault::FaultPoints::fires`]); the caller then calls [`abort_at`].
pub fn fires(point: &'static str) -> bool {
    FAULTS.fires(point)
}

/// A fault point: aborts here if it is armed and this is its n-th hit.
#[inline]
pub fn point(point: &'static str) {
    FAULTS.point(point)
}
