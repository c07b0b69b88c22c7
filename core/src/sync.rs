//! The sync client's decisions, as pure functions, and its progress types.
//!
//! A sync runs in rounds ([`crate::Registrar::sync_with`] drives them):
//!
//! 1. **Outbox** (one transaction): every record's automerge changes made
//!    on this tablet since its outboxed heads are [`batch`]ed into change
//!    sets of at most [`MAX_RECORDS_PER_CHANGE_SET`] records, signed and
//!    chained by [`seal_batches`], stored sealed in the outbox.
//! 2. **Push**: the unacknowledged change sets, in order, several per
//!    request ([`take_for_request`]).
//! 3. **Answer**: [`interpret`] checks the answer against what was sent
//!    (every acknowledgement must name a change set of the request with
//!    its exact hash) and says what to record: acknowledgements, a rewind
//!    when the server lost state, or a refusal that stops the sync. Acks,
//!    server updates and the new cursor are then stored in one
//!    transaction.
//!
//! The tablet's state only moves forward inside transactions, so a sync
//! may be cut at any byte: the next one resends what was not acknowledged,
//! and the server acknowledges a resend again without applying it twice.

use std::ops::ControlFlow;

use crvs_schema::wire::{
    ChainPosition, ChangeSet, Hash, RecordChanges, RefusalCode, SignedChangeSet, SyncResponse,
};
use ed25519_dalek::SigningKey;

use crate::error::{Error, Result};

mod driver;
pub mod machine;

pub use machine::{Step, SyncMachine};

/// At most this many records per change set.
pub const MAX_RECORDS_PER_CHANGE_SET: usize = 100;
/// At most this many raw change bytes per change set (half of the server's
/// decoded limit, leaving room for framing).
pub const MAX_RAW_BYTES_PER_CHANGE_SET: usize = crvs_schema::wire::MAX_CHANGE_SET_DECODED / 2;
/// At most this many change sets per sync request.
pub const MAX_CHANGE_SETS_PER_REQUEST: usize = 10;
/// At most this many change-set bytes per sync request (4 MiB).
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;
/// A sync gives up after this many rewinds in a row (a server that keeps
/// asking for the same change sets is broken, not behind).
pub const MAX_REWINDS: u32 = 3;

/// The phase a sync is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPhase {
    /// Batching new changes into signed change sets.
    Preparing,
    /// Sending change sets.
    Pushing,
    /// Receiving the server's updates.
    Pulling,
    /// Finished.
    Done,
}

/// A progress step, given to the [`SyncObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SyncProgress {
    /// The phase.
    pub phase: SyncPhase,
    /// Change sets acknowledged so far in this sync.
    pub pushed: u64,
    /// Change sets to acknowledge in this sync (grows if the server asks
    /// for a resend).
    pub total: u64,
    /// Record updates from the server applied so far.
    pub pulled: u64,
}

/// Watches a sync and may cancel it.
pub trait SyncObserver {
    /// Called after each step. `Break` cancels: the sync stops cleanly
    /// after the step (everything done so far is stored) and its report is
    /// marked `cancelled`.
    fn progress(&self, p: SyncProgress) -> ControlFlow<()>;
}

/// An observer that never cancels and shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl SyncObserver for Quiet {
    fn progress(&self, _: SyncProgress) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl<F: Fn(SyncProgress) -> ControlFlow<()>> SyncObserver for F {
    fn progress(&self, p: SyncProgress) -> ControlFlow<()> {
        self(p)
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Change sets the server acknowledged during this sync.
    pub pushed: u64,
    /// Records carried by those change sets.
    pub records_pushed: u64,
    /// Records updated by the server's changes during this sync.
    pub pulled: u64,
    /// KIdCs that arrived during this sync.
    pub kidcs_received: u64,
    /// Records of the office made on other tablets that arrived during
    /// this sync (a new or replacement tablet receives them all).
    pub records_received: u64,
    /// Change sets still unacknowledged after the sync.
    pub pending: u64,
    /// Records whose sync state is still `pending`.
    pub records_pending: u64,
    /// Change sets made from new changes during this sync.
    pub change_sets_created: u64,
    /// HTTP (or relay) round trips.
    pub requests: u64,
    /// When the server asked to resend from an earlier change set (it lost
    /// state), the sequence number it resent from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resent_from: Option<u64>,
    /// When this tablet's chain disagreed with the server's (it lost its
    /// last commit, or runs from an old copy of its store): the server's
    /// sequence number it adopted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_server_seq: Option<u64>,
    /// The observer cancelled the sync.
    pub cancelled: bool,
}

/// Splits records' new changes into change-set bodies: at most `max_records`
/// records and about `max_raw_bytes` of raw changes each (a single record
/// larger than that travels alone). Records with no changes are dropped.
/// Order is kept.
pub fn batch(
    records: Vec<RecordChanges>,
    max_records: usize,
    max_raw_bytes: usize,
) -> Vec<Vec<RecordChanges>> {
    let max_records = max_records.max(1);
    let mut out: Vec<Vec<RecordChanges>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for r in records.into_iter().filter(|r| !r.changes.is_empty()) {
        let size: usize = r.changes.iter().map(Vec::len).sum();
        if !current.is_empty() && (current.len() >= max_records || bytes + size > max_raw_bytes) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(r);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Where the device's hash chain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    /// The sequence number of the next change set (1 for the first).
    pub next_seq: u64,
    /// The hash of the last change set (zeros before the first).
    pub last_hash: Hash,
}

/// Signs change-set bodies as the next links of the chain, advancing it.
pub fn seal_batches(
    chain: &mut Chain,
    key: &SigningKey,
    device_id: [u8; 16],
    device_clock_ms: i64,
    batches: Vec<Vec<RecordChanges>>,
) -> Result<Vec<SignedChangeSet>> {
    let mut out = Vec::with_capacity(batches.len());
    for records in batches {
        let body = ChangeSet {
            prev_hash: chain.last_hash,
            device_clock_ms,
            records,
        };
        let signed = SignedChangeSet::seal(key, device_id, chain.next_seq, &body)?;
        chain.last_hash = signed.hash();
        chain.next_seq += 1;
        out.push(signed);
    }
    Ok(out)
}

/// How many of the waiting change sets (their byte lengths, in order) go
/// into the next request: at most `max_count` and `max_bytes`, but always
/// at least one when any wait, so a large one is never stuck.
pub fn take_for_request(lengths: &[u64], max_count: usize, max_bytes: u64) -> usize {
    let mut total = 0u64;
    let mut n = 0;
    for &len in lengths.iter().take(max_count.max(1)) {
        if n > 0 && total + len > max_bytes {
            break;
        }
        total += len;
        n += 1;
    }
    n
}

/// What an answer means for the tablet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Sequence numbers acknowledged (each one's hash checked), in order.
    pub acked: Vec<u64>,
    /// Of those, the ones the server set aside (an operator unblocked this
    /// tablet): their records are set aside.
    pub set_aside: Vec<u64>,
    /// The server lost change sets from this sequence number on: forget
    /// their acknowledgements and resend from there.
    pub rewind_to: Option<u64>,
    /// A refusal that stops the sync, after the acknowledgements above are
    /// stored: `(code, message)`.
    pub refused: Option<(String, String)>,
    /// The server holds a chain for this device that this tablet's does
    /// not continue: it lost its last commit, or runs from an old copy of
    /// its store. The tablet adopts this position, and sends again, under
    /// the next sequence numbers, the records of the change sets it made
    /// that were not acknowledged.
    pub adopt: Option<ChainPosition>,
}

/// Checks an answer against the change sets sent (`sent`: sequence
/// numbers and hashes, in order), what the tablet had acknowledged before
/// (`acked_seq`) and its next sequence number (`next_seq`).
///
/// Fails, and nothing of the answer may be stored, when the answer does not
/// match the request: an acknowledgement of a change set that was not sent,
/// out of order, or with another hash; or a server that claims change sets
/// this tablet never made.
pub fn interpret(
    sent: &[(u64, Hash)],
    acked_seq: u64,
    next_seq: u64,
    resp: &SyncResponse,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    if resp.acks.len() > sent.len() {
        return Err(Error::Protocol(
            "the answer acknowledges more change sets than were sent".into(),
        ));
    }
    for (ack, (seq, hash)) in resp.acks.iter().zip(sent) {
        if ack.seq != *seq {
            return Err(Error::Protocol(format!(
                "the answer acknowledges change set {} where {seq} was sent",
                ack.seq
            )));
        }
        if ack.hash != *hash {
            return Err(Error::Protocol(format!(
                "the acknowledgement of change set {seq} names another hash than the one sent"
            )));
        }
        out.acked.push(*seq);
        if ack.outcome == crvs_schema::wire::AckOutcome::SetAside {
            out.set_aside.push(*seq);
        }
    }
    let acked_now = out.acked.last().copied().unwrap_or(0).max(acked_seq);
    if let Some(r) = &resp.refusal
        && r.code == RefusalCode::ClonedStore
    {
        // Another copy of this store holds the device's chain: this copy
        // stops, and never adopts its way back in.
        out.refused = Some((r.code.as_str().to_string(), r.message.clone()));
        return Ok(out);
    }
    // Format 3 answers name the server's chain position (format 2 leave
    // its hash zero): the tablet can adopt it.
    let can_adopt = resp.chain.hash != [0; 32] && resp.chain.seq >= acked_now;
    if resp.next_seq > next_seq && can_adopt {
        out.adopt = Some(resp.chain);
        return Ok(out);
    }
    if resp.next_seq > next_seq {
        return Err(Error::Protocol(format!(
            "the server expects change set {} but this tablet made only {}: was the store restored from a backup?",
            resp.next_seq,
            next_seq.saturating_sub(1)
        )));
    }
    match &resp.refusal {
        Some(r) if r.code == RefusalCode::SequenceGap => match r.expected_seq {
            // The server lost change sets this tablet still keeps.
            Some(e) if e >= 1 && e <= acked_now => {
                out.rewind_to = Some(e);
            }
            _ => out.refused = Some((r.code.as_str().to_string(), r.message.clone())),
        },
        Some(r) if r.code == RefusalCode::HashChainMismatch && can_adopt => out.adopt = Some(resp.chain),
        Some(r) => out.refused = Some((r.code.as_str().to_string(), r.message.clone())),
        None => {
            // Nothing refused, but the server expects a change set the
            // tablet thinks acknowledged: it lost state (restored from a
            // backup), and asks for the missing ones.
            if resp.next_seq >= 1 && resp.next_seq <= acked_now {
                out.rewind_to = Some(resp.next_seq);
            }
        }
    }
    Ok(out)
}

/// [`crvs_schema::par::map`] from [`PARALLEL_FROM`] items. A sync opens,
/// merges and seals thousands of documents: CPU work that needs nothing
/// but the data key. A panic in a worker is a bug: it goes on as one here.
pub(crate) fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    crvs_schema::par::map(items, PARALLEL_FROM, f).unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Work on several threads from this many items on.
const PARALLEL_FROM: usize = 32;

/// Calls the observer, treating a panic in it as a cancellation so that a
/// faulty callback cannot leave a half-done step.
pub(crate) fn notify(observer: &dyn SyncObserver, p: SyncProgress) -> ControlFlow<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| observer.progress(p)))
        .unwrap_or(ControlFlow::Break(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_the_order_and_passes_on_a_workers_panic() {
        let items: Vec<u32> = (0..1000).collect();
        assert_eq!(
            par_map(items.clone(), |i| i * 2),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
        assert_eq!(
            par_map(vec![1, 2, 3], |i| i + 1),
            vec![2, 3, 4],
            "a few stay on this thread"
        );
        let panicked =
            std::panic::catch_unwind(|| par_map(items, |i| if i == 700 { panic!("worker") } else { i }));
        assert!(panicked.is_err());
    }
    use crvs_schema::wire::{Ack, AckOutcome, Refusal};

    fn rc(id: u8, sizes: &[usize]) -> RecordChanges {
        RecordChanges {
            record_id: [id; 16],
            changes: sizes.iter().map(|&n| vec![id; n]).collect(),
        }
    }

    fn response(acks: &[(u64, Hash)], refusal: Option<Refusal>, next_seq: u64) -> SyncResponse {
        SyncResponse {
            request_hash: [0; 32],
            server_time_ms: 0,
            acks: acks
                .iter()
                .map(|&(seq, hash)| Ack {
                    seq,
                    hash,
                    outcome: AckOutcome::Applied,
                })
                .collect(),
            refusal,
            next_seq,
            updates: vec![],
            cursor: 0,
            more: false,
            issuances: Vec::new(),
            chain: ChainPosition::default(),
            notifications: Vec::new(),
            directory: None,
        }
    }

    fn gap(seq: u64, expected: u64) -> Option<Refusal> {
        Some(Refusal {
            seq,
            code: RefusalCode::SequenceGap,
            expected_seq: Some(expected),
            message: "gap".into(),
        })
    }

    #[test]
    fn change_sets_hold_at_most_a_hundred_records_in_order() {
        let records: Vec<_> = (0..250u32).map(|i| rc((i % 250) as u8, &[10])).collect();
        let batches = batch(records, MAX_RECORDS_PER_CHANGE_SET, MAX_RAW_BYTES_PER_CHANGE_SET);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        let flat: Vec<u8> = batches.iter().flatten().map(|r| r.record_id[0]).collect();
        assert_eq!(flat, (0..250u32).map(|i| i as u8).collect::<Vec<_>>());
    }

    #[test]
    fn records_without_changes_make_no_change_set() {
        assert!(batch(vec![rc(1, &[])], 100, 1000).is_empty());
        assert_eq!(batch(vec![rc(1, &[]), rc(2, &[3])], 100, 1000).len(), 1);
    }

    #[test]
    fn a_byte_budget_splits_batches_but_never_strands_a_large_record() {
        let batches = batch(
            vec![rc(1, &[60]), rc(2, &[60]), rc(3, &[500]), rc(4, &[1])],
            100,
            100,
        );
        let ids: Vec<Vec<u8>> = batches
            .iter()
            .map(|b| b.iter().map(|r| r.record_id[0]).collect())
            .collect();
        assert_eq!(ids, vec![vec![1], vec![2], vec![3], vec![4]]);
    }

    #[test]
    fn sealed_change_sets_continue_the_sequence_and_hash_chain() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut chain = Chain {
            next_seq: 1,
            last_hash: [0; 32],
        };
        let first = seal_batches(
            &mut chain,
            &key,
            [7; 16],
            5,
            vec![vec![rc(1, &[4])], vec![rc(2, &[4])]],
        )
        .unwrap();
        let second = seal_batches(&mut chain, &key, [7; 16], 6, vec![vec![rc(3, &[4])]]).unwrap();
        let all: Vec<_> = first.iter().chain(&second).collect();
        assert_eq!(all.iter().map(|c| c.seq()).collect::<Vec<_>>(), vec![1, 2, 3]);
        let mut prev = [0u8; 32];
        for cs in &all {
            let body = cs.open(&key.verifying_key()).unwrap();
            assert_eq!(body.prev_hash, prev);
            assert_eq!(cs.device_id(), [7; 16]);
            prev = cs.hash();
        }
        assert_eq!(chain.next_seq, 4);
        assert_eq!(chain.last_hash, all[2].hash());
    }

    #[test]
    fn a_request_takes_at_most_ten_change_sets_and_four_mebibytes_but_at_least_one() {
        assert_eq!(take_for_request(&[1; 25], 10, MAX_REQUEST_BYTES), 10);
        assert_eq!(take_for_request(&[3 << 20, 2 << 20], 10, MAX_REQUEST_BYTES), 1);
        assert_eq!(take_for_request(&[9 << 20, 1], 10, MAX_REQUEST_BYTES), 1);
        assert_eq!(take_for_request(&[], 10, MAX_REQUEST_BYTES), 0);
    }

    #[test]
    fn acknowledgements_with_the_sent_hashes_are_accepted() {
        let sent = [(3, [3; 32]), (4, [4; 32])];
        let out = interpret(&sent, 2, 5, &response(&sent, None, 5)).unwrap();
        assert_eq!(out.acked, vec![3, 4]);
        assert_eq!(out.rewind_to, None);
        assert_eq!(out.refused, None);
    }

    #[test]
    fn an_acknowledgement_with_a_wrong_hash_is_refused() {
        let sent = [(3, [3; 32]), (4, [4; 32])];
        let err = interpret(&sent, 2, 5, &response(&[(3, [3; 32]), (4, [9; 32])], None, 5)).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)));
    }

    #[test]
    fn an_acknowledgement_of_a_change_set_not_sent_is_refused() {
        let sent = [(3, [3; 32])];
        assert!(interpret(&sent, 2, 4, &response(&[(5, [3; 32])], None, 6)).is_err());
        assert!(interpret(&sent, 2, 4, &response(&[(3, [3; 32]), (4, [4; 32])], None, 5)).is_err());
        assert!(interpret(&[], 2, 4, &response(&[(3, [3; 32])], None, 4)).is_err());
    }

    #[test]
    fn a_gap_below_what_was_acknowledged_rewinds_to_the_expected_change_set() {
        // The tablet had 1..=5 acknowledged and sends 6; the server,
        // restored from a backup, expects 3.
        let sent = [(6, [6; 32])];
        let out = interpret(&sent, 5, 7, &response(&[], gap(6, 3), 3)).unwrap();
        assert_eq!(out.rewind_to, Some(3));
        assert!(out.acked.is_empty());
        assert_eq!(out.refused, None);
    }

    #[test]
    fn a_server_expecting_an_acknowledged_change_set_rewinds_even_without_a_refusal() {
        let out = interpret(&[], 5, 6, &response(&[], None, 2)).unwrap();
        assert_eq!(out.rewind_to, Some(2));
        let out = interpret(&[], 5, 6, &response(&[], None, 6)).unwrap();
        assert_eq!(out.rewind_to, None);
    }

    #[test]
    fn a_gap_for_the_first_change_set_sent_is_a_refusal_not_a_loop() {
        let sent = [(3, [3; 32])];
        let out = interpret(&sent, 2, 4, &response(&[], gap(3, 3), 3)).unwrap();
        assert_eq!(out.rewind_to, None);
        assert_eq!(out.refused.unwrap().0, "sequence_gap");
        // A gap above anything the tablet could resend is a refusal too.
        let out = interpret(&sent, 2, 4, &response(&[], gap(3, 9), 3)).unwrap();
        assert!(out.refused.is_some());
    }

    #[test]
    fn other_refusals_stop_the_sync_after_the_earlier_acknowledgements() {
        let sent = [(3, [3; 32]), (4, [4; 32])];
        let refusal = Some(Refusal {
            seq: 4,
            code: RefusalCode::OutOfScope,
            expected_seq: None,
            message: "record outside the device's office".into(),
        });
        let out = interpret(&sent, 2, 5, &response(&[(3, [3; 32])], refusal, 4)).unwrap();
        assert_eq!(out.acked, vec![3]);
        assert_eq!(out.refused.unwrap().0, "out_of_scope");
    }

    #[test]
    fn a_server_ahead_of_the_tablet_is_refused() {
        assert!(matches!(
            interpret(&[], 0, 1, &response(&[], None, 4)),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn a_panicking_observer_cancels_instead_of_unwinding() {
        let observer = |_: SyncProgress| -> ControlFlow<()> { panic!("observer failed") };
        let p = SyncProgress {
            phase: SyncPhase::Pushing,
            pushed: 0,
            total: 1,
            pulled: 0,
        };
        assert_eq!(notify(&observer, p), ControlFlow::Break(()));
        assert_eq!(notify(&Quiet, p), ControlFlow::Continue(()));
    }
}
