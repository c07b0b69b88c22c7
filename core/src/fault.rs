//! Named fault points: crash tests make the `crvs` process abort at an
//! exact step of a sync, instead of killing it after a guessed delay.
//!
//! Armed by the environment variable `CRVS_FAULT=<point>` (abort the first
//! time the point is reached) or `CRVS_FAULT=<point>:<n>` (the n-th time,
//! counting from 1), read once: at start by `crvs` (`check_env`), or else
//! the first time any point is reached. On
//! reaching an armed point the process prints one line on stderr,
//! `fault point reached: <point>`, and calls [`std::process::abort`]
//! (SIGABRT: no destructor runs, no transaction is rolled back politely,
//! as in a power cut as far as SQLite's durability is concerned).
//!
//! Unset (every real tablet), a point costs one atomic load and a branch.
//! Only the process's environment arms it: nothing from the network or a
//! store reaches it. The server has the same mechanism with its own points
//! (`crvs_server::fault`).
//!
//! The tablet's points, in the order a sync reaches them:
//!
//! - `before_outbox_commit`: the new change sets are built, signed and
//!   inserted into the outbox, just before that transaction commits
//!   (`Registrar::fill_outbox`). After the crash nothing of them exists.
//! - `after_answer`: the server's answer arrived (the server committed it),
//!   before it is checked and the acknowledgement transaction is stored.
//!   After the crash the tablet resends change sets the server already has.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a fault point.
pub const ENV: &str = "CRVS_FAULT";

/// The tablet's fault points (see the module documentation).
pub const POINTS: &[&str] = &["before_outbox_commit", "after_answer"];

/// The armed point: its name, the hit that aborts, and the hits so far.
struct Armed {
    point: String,
    nth: u64,
    hits: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Parses `point` or `point:n` against `points`.
fn parse(value: &str, points: &[&str]) -> Result<(String, u64), String> {
    let (point, nth) = match value.split_once(':') {
        Some((p, n)) => (
            p,
            n.parse::<u64>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("{ENV}: the count after ':' must be a number from 1"))?,
        ),
        None => (value, 1),
    };
    if !points.contains(&point) {
        return Err(format!(
            "{ENV}: no fault point {point:?} here (known: {})",
            points.join(", ")
        ));
    }
    Ok((point.to_string(), nth))
}

fn armed() -> Option<&'static Armed> {
    ARMED
        .get_or_init(|| {
            let value = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
            // `check_env` refuses a bad value at start; here it stays unarmed.
            let (point, nth) = parse(&value, POINTS).ok()?;
            Some(Armed {
                point,
                nth,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Reads `CRVS_FAULT` at start (the binaries call this first), so that a
/// misspelt point fails loudly instead of never firing, and arms the
/// point. `Ok` when unset.
pub fn check_env() -> Result<(), String> {
    if let Ok(v) = std::env::var(ENV)
        && !v.is_empty()
    {
        parse(&v, POINTS)?;
    }
    let _ = armed();
    Ok(())
}

/// Whether this is the armed hit of `point`: counts the hit, and is true
/// exactly once. The caller then does what the point needs and calls
/// [`abort_at`]. Most callers want [`point`].
pub fn fires(point: &'static str) -> bool {
    debug_assert!(POINTS.contains(&point), "unknown fault point {point}");
    match armed() {
        Some(a) if a.point == point => a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth,
        _ => false,
    }
}

/// Prints the marker line and aborts the process.
pub fn abort_at(point: &'static str) -> ! {
    eprintln!("fault point reached: {point}");
    std::process::abort()
}

/// A fault point: aborts here if it is armed and this is its n-th hit.
#[inline]
pub fn point(point: &'static str) {
    if fires(point) {
        abort_at(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_with_or_without_a_count_parses_and_an_unknown_one_is_refused() {
        assert_eq!(parse("after_answer", POINTS), Ok(("after_answer".into(), 1)));
        assert_eq!(parse("after_answer:3", POINTS), Ok(("after_answer".into(), 3)));
        assert!(parse("after_answer:0", POINTS).is_err());
        assert!(parse("after_anwser", POINTS).is_err());
    }
}
