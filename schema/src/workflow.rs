//! The registration workflow, as pure rules.
//!
//! A record's workflow is an append-only list of [`Transition`]s kept inside
//! its automerge document. The current [`Status`] is always *derived* from
//! that list (plus the server-owned registration part, see
//! [`crate::record`]); there is no `status` field that a tablet and the
//! server could both overwrite.
//!
//! ```text
//! submitted ──verify──▶ verified ──approve──▶ approved ──(server: number, KIdC)──▶ registered
//!   ▲  │                    │
//!   │  └──────reject────────┴──▶ rejected
//!   └────────resubmit (corrected data)──────┘
//! ```
//!
//! A rejected record is corrected and resubmitted by a clerk; it keeps its
//! whole history. Every clerk who submitted or resubmitted it counts as
//! its clerk: none of them may verify it.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use crate::text;

/// The longest staff id, in characters.
pub const MAX_STAFF_ID_CHARS: usize = 64;

/// What a staff member did to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A clerk entered the record.
    Submit,
    /// A second staff member checked it (the plan's "double verification").
    Verify,
    /// The registrar approved it.
    Approve,
    /// The registrar rejected it, with a reason.
    Reject,
    /// A clerk resubmitted a rejected record, with its data corrected.
    Resubmit,
    /// A registrar settled what two tablets of the office wrote at once
    /// (two corrections, two steps that cannot both stand): the record's
    /// data as the registrar chose it. The steps before stay as history;
    /// the record starts again as submitted, with the registrar as its
    /// clerk, and is verified and approved again.
    Settle,
}

impl Action {
    /// The stable name stored in documents and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Submit => "submit",
            Action::Verify => "verify",
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::Resubmit => "resubmit",
            Action::Settle => "settle",
        }
    }

    /// Parses the stable name.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "submit" => Action::Submit,
            "verify" => Action::Verify,
            "approve" => Action::Approve,
            "reject" => Action::Reject,
            "resubmit" => Action::Resubmit,
            "settle" => Action::Settle,
            _ => return None,
        })
    }
}

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Entered by a clerk, waiting for a second staff member.
    Submitted,
    /// Checked by a second staff member, waiting for the registrar.
    Verified,
    /// Approved on the tablet; the server has not yet registered it.
    Approved,
    /// Rejected, with a reason.
    Rejected,
    /// Approved and registered by the server (a birth has its KIdC).
    Registered,
    /// Held by the server for review (for example a probable duplicate).
    Held,
}

impl Status {
    /// The stable name shown in JSON and stored in plaintext columns.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Submitted => "submitted",
            Status::Verified => "verified",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Registered => "registered",
            Status::Held => "held",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of the workflow: who did what, when, on which device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// What was done.
    pub action: Action,
    /// The staff id of who did it.
    pub by: String,
    /// The device clock at the time, in milliseconds since the Unix epoch.
    /// Tablet clocks drift: the server records its own receipt time too.
    pub at_ms: i64,
    /// The device (or store, before enrolment) that recorded it.
    pub device: String,
    /// The reason, required for a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// On a submission: the id of the birth or death notification (from
    /// a health facility or a court) this registration answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<String>,
    /// On a rejection: the reason's code, from the list the server sends
    /// ([`crate::staff::OfficeDirectory::rejection_codes`]); `reason` is
    /// the free text. Rejections made before codes existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The longest rejection code, in characters.
pub const MAX_REJECTION_CODE_CHARS: usize = 40;

/// Whether `code` has a rejection code's form: 1 to
/// [`MAX_REJECTION_CODE_CHARS`] of `a-z 0-9 _`.
pub fn is_rejection_code(code: &str) -> bool {
    (1..=MAX_REJECTION_CODE_CHARS).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Why a transition is not allowed. Messages carry no personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    /// The first transition of a record must be its submission.
    #[error("a record's first step must be its submission")]
    MustStartWithSubmit,
    /// A record is submitted only once.
    #[error("the record is already submitted")]
    AlreadySubmitted,
    /// The action does not apply in the current state.
    #[error("cannot {action} a record that is {status}", action = action.as_str())]
    NotAllowedFrom {
        /// The attempted action.
        action: Action,
        /// The state the record is in.
        status: Status,
    },
    /// Double verification: the verifier entered the record themselves.
    #[error("the record must be verified by a different staff member from the one who entered it")]
    VerifierIsClerk,
    /// Rejections are printable and need a reason.
    #[error("a rejection needs a reason")]
    MissingReason,
    /// A rejection code that does not have a code's form, or a code on
    /// another step than a rejection.
    #[error("a rejection code is 1 to 40 of the characters a-z, 0-9 and '_', and only a rejection has one")]
    BadRejectionCode,
    /// Every transition names a staff member.
    #[error("a staff id is required")]
    MissingStaff,
    /// A staff id longer than [`MAX_STAFF_ID_CHARS`].
    #[error("the staff id must be at most {MAX_STAFF_ID_CHARS} characters long")]
    StaffIdTooLong,
    /// A staff id with a character outside its charset.
    #[error(
        "the staff id may contain only the letters A to Z and a to z, the digits 0 to 9, \
         '.', '_', '-' and '@'"
    )]
    StaffIdCharacters,
}

/// Checks the staff id of a new step: 1 to [`MAX_STAFF_ID_CHARS`]
/// characters from `A-Z a-z 0-9 . _ - @` (so no spaces, line breaks or
/// invisible characters). Staff ids are typed by hand on tablets and end
/// up in printed notices; such ids are what offices hand out
/// (`clerk-01`, `KH-171003-007`, an e-mail address).
///
/// Steps already in a record are not checked again: a record written by an
/// earlier version stays readable. The comparison between staff members
/// uses [`staff_id_key`] in any case.
pub fn check_staff_id(by: &str) -> Result<(), WorkflowError> {
    if by.is_empty() {
        return Err(WorkflowError::MissingStaff);
    }
    if by.chars().count() > MAX_STAFF_ID_CHARS {
        return Err(WorkflowError::StaffIdTooLong);
    }
    if !by
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err(WorkflowError::StaffIdCharacters);
    }
    Ok(())
}

/// The form in which two staff ids are compared: Unicode NFKC, invisible
/// characters ([`text::is_invisible`]) removed, whitespace trimmed, lower
/// case. `CLERK-01`, `clerk-01` followed by a zero-width space, and
/// `ｃｌｅｒｋ－０１` (full width) are all the same staff member.
pub fn staff_id_key(by: &str) -> String {
    let visible: String = by.nfkc().filter(|&c| !text::is_invisible(c)).collect();
    visible.trim().to_lowercase()
}

/// Applies one transition to the state a record is in (`None` before its
/// first transition). `clerks` are the staff ids that submitted or
/// resubmitted the record so far.
pub fn next_status(
    current: Option<Status>,
    clerks: &[&str],
    t: &Transition,
) -> Result<Status, WorkflowError> {
    if staff_id_key(&t.by).is_empty() {
        return Err(WorkflowError::MissingStaff);
    }
    if let Some(code) = &t.code
        && (t.action != Action::Reject || !is_rejection_code(code))
    {
        return Err(WorkflowError::BadRejectionCode);
    }
    let Some(current) = current else {
        return match t.action {
            Action::Submit => Ok(Status::Submitted),
            _ => Err(WorkflowError::MustStartWithSubmit),
        };
    };
    match (t.action, current) {
        (Action::Submit, _) => Err(WorkflowError::AlreadySubmitted),
        (Action::Verify, Status::Submitted) => {
            let verifier = staff_id_key(&t.by);
            if clerks.iter().any(|c| staff_id_key(c) == verifier) {
                Err(WorkflowError::VerifierIsClerk)
            } else {
                Ok(Status::Verified)
            }
        }
        (Action::Approve, Status::Verified) => Ok(Status::Approved),
        (Action::Reject, Status::Submitted | Status::Verified) => {
            if t.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                Err(WorkflowError::MissingReason)
            } else {
                Ok(Status::Rejected)
            }
        }
        (Action::Resubmit, Status::Rejected) => Ok(Status::Submitted),
        // A settlement starts the record again (see `derive`).
        (Action::Settle, _) => Ok(Status::Submitted),
        (action, status) => Err(WorkflowError::NotAllowedFrom { action, status }),
    }
}

/// Where the workflow that counts starts: after the last settlement, the
/// steps before it being history (two tablets' concurrent steps need not
/// make one valid sequence; a registrar settled them).
fn last_settlement(transitions: &[Transition]) -> Option<usize> {
    transitions.iter().rposition(|t| t.action == Action::Settle)
}

/// Derives the tablet-side state from the whole list of transitions,
/// checking every step since the last settlement (and, before it, that
/// each step names someone). An empty list has no state yet.
pub fn derive(transitions: &[Transition]) -> Result<Option<Status>, WorkflowError> {
    let (mut status, mut clerks, rest) = match last_settlement(transitions) {
        Some(k) => {
            if transitions[..=k].iter().any(|t| staff_id_key(&t.by).is_empty()) {
                return Err(WorkflowError::MissingStaff);
            }
            if transitions.first().is_some_and(|t| t.action != Action::Submit) {
                return Err(WorkflowError::MustStartWithSubmit);
            }
            (
                Some(Status::Submitted),
                vec![transitions[k].by.as_str()],
                &transitions[k + 1..],
            )
        }
        None => (None, Vec::new(), transitions),
    };
    for t in rest {
        status = Some(next_status(status, &clerks, t)?);
        if matches!(t.action, Action::Submit | Action::Resubmit) {
            clerks.push(t.by.as_str());
        }
    }
    Ok(status)
}

/// Checks that `t` may be appended to `transitions` (its staff id by
/// [`check_staff_id`] too), and returns the state that results. A
/// settlement is appended to a list whatever its state (the caller checks
/// that there is something to settle).
pub fn check_append(transitions: &[Transition], t: &Transition) -> Result<Status, WorkflowError> {
    check_staff_id(&t.by)?;
    if t.action == Action::Settle {
        if transitions.is_empty() {
            return Err(WorkflowError::MustStartWithSubmit);
        }
        return next_status(Some(Status::Submitted), &[], t);
    }
    let current = derive(transitions)?;
    let since = last_settlement(transitions);
    let clerks: Vec<&str> = transitions
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            since.is_none_or(|k| *i >= k)
                && matches!(t.action, Action::Submit | Action::Resubmit | Action::Settle)
        })
        .map(|(_, t)| t.by.as_str())
        .collect();
    next_status(current, &clerks, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(action: Action, by: &str) -> Transition {
        Transition {
            action,
            by: by.into(),
            at_ms: 1,
            device: "d".into(),
            reason: None,
            notification: None,
            code: None,
        }
    }

    #[test]
    fn submit_verify_approve_is_the_happy_path() {
        let ts = vec![
            t(Action::Submit, "clerk"),
            t(Action::Verify, "checker"),
            t(Action::Approve, "registrar"),
        ];
        assert_eq!(derive(&ts).unwrap(), Some(Status::Approved));
    }

    #[test]
    fn a_settlement_starts_the_workflow_again_with_the_registrar_as_clerk() {
        // Two concurrent corrections: two resubmissions, no valid sequence.
        let mut reject = t(Action::Reject, "registrar");
        reject.reason = Some("no certificate".into());
        let mut ts = vec![
            t(Action::Submit, "clerk"),
            reject,
            t(Action::Resubmit, "clerk-a"),
            t(Action::Resubmit, "clerk-b"),
        ];
        assert!(derive(&ts).is_err());
        assert_eq!(
            check_append(&ts, &t(Action::Settle, "registrar")),
            Ok(Status::Submitted)
        );
        ts.push(t(Action::Settle, "registrar"));
        assert_eq!(derive(&ts), Ok(Some(Status::Submitted)));
        assert_eq!(
            check_append(&ts, &t(Action::Verify, "registrar")),
            Err(WorkflowError::VerifierIsClerk)
        );
        // The clerks before the settlement no longer count as its clerks.
        assert_eq!(
            check_append(&ts, &t(Action::Verify, "clerk-a")),
            Ok(Status::Verified)
        );
        ts.push(t(Action::Verify, "clerk-a"));
        ts.push(t(Action::Approve, "registrar"));
        assert_eq!(derive(&ts), Ok(Some(Status::Approved)));
        // Never a first step; a step naming nobody is refused even before it.
        assert_eq!(
            check_append(&[], &t(Action::Settle, "registrar")),
            Err(WorkflowError::MustStartWithSubmit)
        );
        assert_eq!(
            derive(&[t(Action::Settle, "registrar")]),
            Err(WorkflowError::MustStartWithSubmit)
        );
        let mut blank = ts.clone();
        blank[2].by = " ".into();
        assert_eq!(derive(&blank), Err(WorkflowError::MissingStaff));
    }

    #[test]
    fn the_clerk_cannot_verify_their_own_record() {
        let ts = vec![t(Action::Submit, "clerk")];
        assert_eq!(
            check_append(&ts, &t(Action::Verify, "clerk")),
            Err(WorkflowError::VerifierIsClerk)
        );
        // Spaces around it do not make another staff member (a stored
        // step may have them; a new one may not).
        assert_eq!(
            derive(&[t(Action::Submit, "clerk"), t(Action::Verify, " clerk ")]),
            Err(WorkflowError::VerifierIsClerk)
        );
    }

    #[test]
    fn the_clerk_cannot_verify_their_own_record_under_another_spelling() {
        let ts = vec![t(Action::Submit, "clerk-01")];
        for disguised in [
            "CLERK-01",
            "Clerk-01",
            "clerk-01\u{200B}",
            "\u{200B}clerk-01",
            "clerk\u{2060}-01",
            "\u{202E}clerk-01",
            "ｃｌｅｒｋ－０１",
        ] {
            // Through the history (as the server reads it) ...
            let mut history = ts.clone();
            history.push(t(Action::Verify, disguised));
            assert_eq!(
                derive(&history),
                Err(WorkflowError::VerifierIsClerk),
                "{disguised:?}"
            );
            assert_eq!(staff_id_key(disguised), "clerk-01", "{disguised:?}");
        }
        // ... and a new step is refused for its characters before that.
        assert_eq!(
            check_append(&ts, &t(Action::Verify, "clerk-01\u{200B}")),
            Err(WorkflowError::StaffIdCharacters)
        );
        assert_eq!(
            check_append(&ts, &t(Action::Verify, "CLERK-01")),
            Err(WorkflowError::VerifierIsClerk)
        );
        assert_eq!(
            check_append(&ts, &t(Action::Verify, "clerk-02")),
            Ok(Status::Verified)
        );
    }

    #[test]
    fn staff_ids_are_short_and_plain() {
        let ts = vec![t(Action::Submit, "clerk")];
        let long = "a".repeat(10_000);
        for (by, expected) in [
            (long.as_str(), WorkflowError::StaffIdTooLong),
            ("checker\nregistrar", WorkflowError::StaffIdCharacters),
            ("check er", WorkflowError::StaffIdCharacters),
            ("checker\u{202E}", WorkflowError::StaffIdCharacters),
            ("ពិនិត្យ", WorkflowError::StaffIdCharacters),
            ("", WorkflowError::MissingStaff),
            ("\u{200B}", WorkflowError::StaffIdCharacters),
        ] {
            assert_eq!(check_append(&ts, &t(Action::Verify, by)), Err(expected), "{by:?}");
        }
        let longest = "a".repeat(MAX_STAFF_ID_CHARS);
        for by in [
            longest.as_str(),
            "KH-171003-007",
            "sophea.chan@moi.gov.kh",
            "clerk_2",
        ] {
            assert_eq!(
                check_append(&ts, &t(Action::Verify, by)),
                Ok(Status::Verified),
                "{by}"
            );
        }
        // An invisible-only staff id in history counts as no staff id.
        assert_eq!(
            derive(&[t(Action::Submit, "\u{200B}\u{2060}")]),
            Err(WorkflowError::MissingStaff)
        );
    }

    #[test]
    fn approving_an_unverified_record_is_refused() {
        let ts = vec![t(Action::Submit, "clerk")];
        assert_eq!(
            check_append(&ts, &t(Action::Approve, "registrar")),
            Err(WorkflowError::NotAllowedFrom {
                action: Action::Approve,
                status: Status::Submitted
            })
        );
    }

    #[test]
    fn a_rejection_needs_a_reason() {
        let ts = vec![t(Action::Submit, "clerk")];
        let mut r = t(Action::Reject, "registrar");
        assert_eq!(check_append(&ts, &r), Err(WorkflowError::MissingReason));
        r.reason = Some("  ".into());
        assert_eq!(check_append(&ts, &r), Err(WorkflowError::MissingReason));
        r.reason = Some("mother's identity document missing".into());
        assert_eq!(check_append(&ts, &r), Ok(Status::Rejected));
    }

    #[test]
    fn a_rejected_record_is_resubmitted_and_none_of_its_clerks_verifies_it() {
        let mut r = t(Action::Reject, "registrar");
        r.reason = Some("mother's document missing".into());
        let mut ts = vec![t(Action::Submit, "clerk-1"), r];
        assert_eq!(
            check_append(&ts, &t(Action::Resubmit, "clerk-2")),
            Ok(Status::Submitted)
        );
        ts.push(t(Action::Resubmit, "clerk-2"));
        for clerk in ["clerk-1", "CLERK-2"] {
            assert_eq!(
                check_append(&ts, &t(Action::Verify, clerk)),
                Err(WorkflowError::VerifierIsClerk),
                "{clerk}"
            );
        }
        ts.push(t(Action::Verify, "checker"));
        ts.push(t(Action::Approve, "registrar"));
        assert_eq!(derive(&ts), Ok(Some(Status::Approved)));
        // Only a rejected record is resubmitted.
        assert!(check_append(&ts, &t(Action::Resubmit, "clerk-1")).is_err());
        assert!(check_append(&ts[..1], &t(Action::Resubmit, "clerk-1")).is_err());
    }

    #[test]
    fn nothing_follows_a_rejection_or_an_approval() {
        let mut r = t(Action::Reject, "registrar");
        r.reason = Some("duplicate".into());
        let ts = vec![t(Action::Submit, "clerk"), r];
        assert!(check_append(&ts, &t(Action::Verify, "checker")).is_err());
        let ts = vec![
            t(Action::Submit, "clerk"),
            t(Action::Verify, "checker"),
            t(Action::Approve, "registrar"),
        ];
        assert!(check_append(&ts, &t(Action::Approve, "registrar")).is_err());
    }

    #[test]
    fn a_record_must_start_with_its_submission() {
        assert_eq!(
            derive(&[t(Action::Verify, "x")]),
            Err(WorkflowError::MustStartWithSubmit)
        );
        assert_eq!(derive(&[]), Ok(None));
    }
}
