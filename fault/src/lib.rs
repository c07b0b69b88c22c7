//! Named fault points: crash tests make a process (`crvs`, `crvs-server`)
//! abort at an exact step, instead of killing it after a guessed delay.
//!
//! Armed by the environment variable `CRVS_FAULT=<point>` (abort the first
//! time the point is reached) or `CRVS_FAULT=<point>:<n>` (the n-th time,
//! counting from 1), read once: at start by the binary
//! ([`FaultPoints::check_env`], which refuses a point the program does not
//! have), or else the first time any point is reached. On reaching an
//! armed point the process prints one line on stderr,
//! `fault point reached: <point>`, and calls [`std::process::abort`]
//! (SIGABRT: no destructor runs and no transaction is rolled back politely;
//! as far as SQLite's durability goes, a power cut).
//!
//! Unset (every real tablet and server), a point costs one atomic load and
//! a branch. Only the process's environment arms it: nothing from the
//! network or a store can. Each program lists its own points
//! (`crvs_core::fault`, `crvs_server::fault`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a fault point.
pub const ENV: &str = "CRVS_FAULT";

/// The armed point: its name, the hit that aborts, and the hits so far.
#[derive(Debug)]
struct Armed {
    point: String,
    nth: u64,
    hits: AtomicU64,
}

/// One program's fault points, and the one armed by its environment.
#[derive(Debug)]
pub struct FaultPoints {
    points: &'static [&'static str],
    armed: OnceLock<Option<Armed>>,
}

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

impl FaultPoints {
    /// A program's points, none armed yet (for a `static`).
    pub const fn new(points: &'static [&'static str]) -> FaultPoints {
        FaultPoints {
            points,
            armed: OnceLock::new(),
        }
    }

    /// The program's points.
    pub fn points(&self) -> &'static [&'static str] {
        self.points
    }

    fn armed(&self) -> Option<&Armed> {
        self.armed
            .get_or_init(|| {
                let value = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
                // `check_env` refuses a bad value at start; here it stays unarmed.
                let (point, nth) = parse(&value, self.points).ok()?;
                Some(Armed {
                    point,
                    nth,
                    hits: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    /// Reads `CRVS_FAULT` at start (the binaries call this first), so that
    /// a misspelt point fails loudly instead of never firing, and arms the
    /// point. `Ok` when unset.
    pub fn check_env(&self) -> Result<(), String> {
        if let Ok(v) = std::env::var(ENV)
            && !v.is_empty()
        {
            parse(&v, self.points)?;
        }
        let _ = self.armed();
        Ok(())
    }

    /// Whether this is the armed hit of `point`: counts the hit, and is
    /// true exactly once. The caller then does what the point needs and
    /// calls [`abort_at`]. Most callers want [`FaultPoints::point`].
    pub fn fires(&self, point: &'static str) -> bool {
        debug_assert!(self.points.contains(&point), "unknown fault point {point}");
        match self.armed() {
            Some(a) if a.point == point => a.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth,
            _ => false,
        }
    }

    /// A fault point: aborts here if it is armed and this is its n-th hit.
    #[inline]
    pub fn point(&self, point: &'static str) {
        if self.fires(point) {
            abort_at(point)
        }
    }
}

/// Prints the marker line and aborts the process.
pub fn abort_at(point: &'static str) -> ! {
    eprintln!("fault point reached: {point}");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POINTS: &[&str] = &["after_commit", "after_answer"];

    #[test]
    fn a_point_with_or_without_a_count_parses_and_an_unknown_one_is_refused() {
        assert_eq!(parse("after_commit", POINTS), Ok(("after_commit".into(), 1)));
        assert_eq!(parse("after_commit:3", POINTS), Ok(("after_commit".into(), 3)));
        assert!(parse("after_commit:0", POINTS).is_err());
        assert!(parse("after_commit:x", POINTS).is_err());
        assert!(parse("after_comit", POINTS).is_err());
    }

    #[test]
    fn an_unarmed_point_never_fires() {
        // The test process has no CRVS_FAULT (CI never sets it for unit
        // tests); a point of another program's list is not armed either.
        let faults = FaultPoints::new(POINTS);
        if std::env::var(ENV).is_err() {
            for _ in 0..3 {
                assert!(!faults.fires("after_commit"));
            }
            assert!(faults.check_env().is_ok());
        }
    }
}
