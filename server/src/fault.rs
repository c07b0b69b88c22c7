//! The `crvs-server` process's named fault points, for crash tests: armed by
//! `CRVS_FAULT=<point>[:<n>]` in its environment, and only there (the
//! mechanism, shared with the other program, is [`crvs_fault`]).
//!
//! The server's points, in the order a sync request reaches them:
//!
//! - `after_decode`: the request is authenticated, its change sets'
//!   signatures checked and their records decoded and prepared, before
//!   the writer is taken (`ingest::handle_sync`). Nothing is stored.
//! - `after_commit`: the request's transaction (acknowledgements, KIdCs)
//!   committed, before the answer is sent (`http`). The tablet never hears
//!   of what the server now holds.
//! - `mid_answer`: the answer (status line, headers with its length, and
//!   the first half of its body) is written to the socket, then the
//!   process aborts before the rest (`http`): the tablet reads a truncated
//!   answer.
//!
//! And `crvs-server restore`'s on PostgreSQL (`backup::postgres`):
//!
//! - `restore_set_aside`: the replaced schema is renamed and the restore
//!   marked under way, before `pg_restore` runs: `public` is empty.
//! - `restore_loaded`: `pg_restore` has loaded the backup, before the
//!   restore's adjustments (devices, counters, feed cursors, tokens).

use crvs_fault::FaultPoints;
pub use crvs_fault::{ENV, abort_at};

/// The server's fault points (see the module documentation).
pub const POINTS: &[&str] = &[
    "after_decode",
    "after_commit",
    "mid_answer",
    "restore_set_aside",
    "restore_loaded",
];

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
