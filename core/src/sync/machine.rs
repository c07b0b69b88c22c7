//! The tablet's sync as a pure state machine: state and bytes in, bytes
//! and decisions out. It touches neither the store nor the network.
//!
//! Its driver (`Registrar::sync_with`, in `driver`) stands at the edges:
//! it reads what the machine asks for from the store, carries the bytes
//! over a [`crate::Transport`] (HTTP today; a relay tablet or a USB stick
//! later drive the same machine), stores the decisions, and reports them
//! back:
//!
//! ```text
//! Step::Build ── driver reads a Batch ──▶ machine.send(batch) ──▶ request bytes
//!      ▲                                          │ transport
//!      │               machine.on_failure(err) ◀──┴──▶ machine.on_answer(bytes, ctx)
//!      │                 Step::RaiseCounter                 │
//!      │                                          Step::Store(decisions)
//!      │                                                    │ driver stores them
//!      └──── Step::Build / Step::Done ◀── machine.stored(applied, remaining)
//!                                           └─ Step::Adopt(position) ── driver adopts
//!                                                     └─ machine.adopted(created, remaining)
//! ```

use crvs_schema::evidence::IssuanceProof;
use crvs_schema::wire::{self, ChainPosition, SyncRequest, SyncResponse};
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::{MAX_REWINDS, Outcome, SyncPhase, SyncReport, interpret};
use crate::error::{Error, Result};

/// The highest server request counter a tablet adopts: far below
/// `u64::MAX`, so that even a forged answer cannot leave it no room.
pub const MAX_ADOPTED_COUNTER: u64 = 1 << 62;

/// One change set read from the outbox for a request.
#[derive(Debug, Clone)]
pub struct OutgoingChangeSet {
    /// Its sequence number.
    pub seq: u64,
    /// Its hash (what the server's acknowledgement must name).
    pub hash: wire::Hash,
    /// How many records it carries.
    pub records: u64,
    /// The signed bytes.
    pub bytes: Vec<u8>,
}

/// What the store holds for the next request: read by the driver, taken
/// by [`SyncMachine::send`].
#[derive(Debug, Clone)]
pub struct Batch {
    /// This device's id.
    pub device_id: [u8; 16],
    /// Change sets sent before whose answer was lost, to ask the server
    /// about (sequence number, hash, records), in order; a request that
    /// asks carries no change sets.
    pub resume: Vec<(u64, wire::Hash, u64)>,
    /// The next unacknowledged change sets, in order.
    pub change_sets: Vec<OutgoingChangeSet>,
    /// The server's proofs of the codes these change sets' records hold.
    pub evidence: Vec<IssuanceProof>,
    /// The store's lineage.
    pub lineage: [u8; 16],
    /// The server position this store adopted, until a request of its
    /// lineage is taken.
    pub adopted: Option<ChainPosition>,
    /// The pull feed's cursor.
    pub cursor: u64,
    /// The request counter, already stored durably.
    pub counter: u64,
    /// The device clock.
    pub device_clock_ms: i64,
    /// What the tablet holds and runs, for the operators.
    pub report: Option<wire::TabletReport>,
}

/// What the store held when an answer arrived: the input to checking it.
#[derive(Debug, Clone, Copy)]
pub struct AnswerContext {
    /// The highest acknowledged sequence number.
    pub acked: u64,
    /// The next sequence number of the store's chain.
    pub next_seq: u64,
}

/// An answer checked and interpreted: the driver stores all of it in one
/// transaction.
#[derive(Debug, Clone)]
pub struct Decisions {
    /// The answer, its signature and request hash checked.
    pub response: SyncResponse,
    /// What it means for this tablet.
    pub outcome: Outcome,
    /// The highest acknowledged sequence number before it.
    pub acked_before: u64,
}

/// What storing an answer changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records the server's changes updated.
    pub updated: u64,
    /// KIdCs that arrived.
    pub kidcs: u64,
    /// Records of the office this store did not have (made on another
    /// tablet of the office) that arrived.
    pub received: u64,
}

/// What the driver does next.
#[derive(Debug)]
pub enum Step {
    /// Read the next [`Batch`] from the store and hand it to
    /// [`SyncMachine::send`].
    Build,
    /// Store the request counter at least this high, then build again.
    RaiseCounter(u64),
    /// Store these decisions in one transaction, then call
    /// [`SyncMachine::stored`].
    Store(Box<Decisions>),
    /// Adopt the server's chain position (one transaction), refill the
    /// outbox, then call [`SyncMachine::adopted`].
    Adopt(ChainPosition),
    /// The sync is complete: store the time, and finish the report.
    Done,
}

/// The request in flight: what the answer is checked against.
#[derive(Debug)]
struct InFlight {
    request_hash: wire::Hash,
    sent: Vec<(u64, wire::Hash, u64)>,
    cursor: u64,
    /// It asked which change sets arrived (the answer to the last request
    /// was lost): its answer is progress even if none did.
    asks: bool,
}

/// A sync in progress (see the module documentation).
#[derive(Debug)]
pub struct SyncMachine {
    server_key: VerifyingKey,
    signing_key: SigningKey,
    report: SyncReport,
    total: u64,
    highest_acked: u64,
    rewinds: u32,
    adoptions: u32,
    counter_resets: u32,
    in_flight: Option<InFlight>,
    /// The last answer's decisions, between `Store` and `stored`.
    last: Option<(Outcome, bool, u64)>,
}

impl SyncMachine {
    /// A sync of a store with `acked` change sets acknowledged, `waiting`
    /// after them, `created` of those made by this sync.
    pub fn start(
        server_key: VerifyingKey,
        signing_key: SigningKey,
        acked: u64,
        waiting: u64,
        created: u64,
    ) -> SyncMachine {
        SyncMachine {
            server_key,
            signing_key,
            report: SyncReport {
                change_sets_created: created,
                ..SyncReport::default()
            },
            total: waiting,
            highest_acked: acked,
            rewinds: 0,
            adoptions: 0,
            counter_resets: 0,
            in_flight: None,
            last: None,
        }
    }

    /// The report so far.
    pub fn report(&self) -> &SyncReport {
        &self.report
    }

    /// Change sets this sync has to push, as far as it knows.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The observer stopped the sync.
    pub fn cancel(&mut self) {
        self.report.cancelled = true;
    }

    /// The sync's result: its report.
    pub fn into_report(self) -> SyncReport {
        self.report
    }

    /// The request for `batch`, sealed: the bytes to send. The phase to
    /// report goes with it.
    pub fn send(&mut self, batch: Batch) -> Result<(Vec<u8>, SyncPhase)> {
        let asks = batch
            .resume
            .first()
            .zip(batch.resume.last())
            .map(|(f, l)| wire::SeqRange { from: f.0, to: l.0 });
        let sent: Vec<(u64, wire::Hash, u64)> = batch
            .resume
            .iter()
            .copied()
            .chain(batch.change_sets.iter().map(|c| (c.seq, c.hash, c.records)))
            .collect();
        let phase = if batch.change_sets.is_empty() {
            SyncPhase::Pulling
        } else {
            SyncPhase::Pushing
        };
        let request = SyncRequest {
            device_id: batch.device_id,
            counter: batch.counter,
            cursor: batch.cursor,
            device_clock_ms: batch.device_clock_ms,
            change_sets: batch.change_sets.into_iter().map(|c| c.bytes).collect(),
            evidence: batch.evidence,
            lineage: batch.lineage,
            adopted: batch.adopted,
            resume: asks,
            report: batch.report,
        }
        .seal(&self.signing_key)?;
        self.in_flight = Some(InFlight {
            request_hash: wire::request_hash(&request),
            sent,
            cursor: batch.cursor,
            asks: asks.is_some(),
        });
        Ok((request, phase))
    }

    /// The request was sent ([`SyncMachine::send`]'s bytes left).
    pub fn sent(&mut self) {
        self.report.requests += 1;
    }

    /// The transport failed. A server that saw a later request counter (a
    /// store restored from a copy, or a replayed request, which changed
    /// nothing) gets one retry above it; anything else ends the sync.
    pub fn on_failure(&mut self, error: Error) -> Result<Step> {
        self.in_flight = None;
        match error {
            Error::CounterBehind(last) if self.counter_resets == 0 && last < MAX_ADOPTED_COUNTER => {
                self.counter_resets += 1;
                tracing::warn!(last, "the server's request counter is ahead; continuing above it");
                Ok(Step::RaiseCounter(last))
            }
            other => Err(other),
        }
    }

    /// The answer's bytes: checked (the server's signature, the request it
    /// answers, every acknowledgement against what was sent) and
    /// interpreted against what the store holds now.
    pub fn on_answer(&mut self, answer: &[u8], ctx: AnswerContext) -> Result<Step> {
        let in_flight = self
            .in_flight
            .take()
            .ok_or_else(|| Error::Protocol("an answer came with no request in flight".into()))?;
        let response = SyncResponse::open(answer, &self.server_key)?;
        if response.request_hash != in_flight.request_hash {
            return Err(Error::Protocol("the answer is for another request".into()));
        }
        let sent_hashes: Vec<(u64, wire::Hash)> = in_flight.sent.iter().map(|&(s, h, _)| (s, h)).collect();
        let outcome = interpret(&sent_hashes, ctx.acked, ctx.next_seq, &response)?;
        let progressed = in_flight.asks
            || !outcome.acked.is_empty()
            || outcome.rewind_to.is_some()
            || !response.updates.is_empty()
            || response.cursor != in_flight.cursor;
        for &(seq, _, records) in &in_flight.sent {
            if outcome.acked.contains(&seq) && seq > self.highest_acked {
                self.report.pushed += 1;
                self.report.records_pushed += records;
                self.highest_acked = seq;
            }
        }
        self.last = Some((outcome.clone(), progressed, u64::from(response.more)));
        Ok(Step::Store(Box::new(Decisions {
            response,
            outcome,
            acked_before: ctx.acked,
        })))
    }

    /// The decisions are stored: `applied` is what they changed,
    /// `remaining` the change sets still unacknowledged.
    pub fn stored(&mut self, applied: Applied, remaining: u64) -> Result<Step> {
        let (outcome, progressed, more) = self
            .last
            .take()
            .ok_or_else(|| Error::Protocol("nothing was waiting to be stored".into()))?;
        self.report.pulled += applied.updated;
        self.report.kidcs_received += applied.kidcs;
        self.report.records_received += applied.received;
        if let Some(position) = outcome.adopt {
            self.adoptions += 1;
            if self.adoptions > 1 {
                return Err(Error::Protocol(
                    "the server's chain position keeps moving away from this tablet's".into(),
                ));
            }
            return Ok(Step::Adopt(position));
        }
        if let Some(from) = outcome.rewind_to {
            self.rewinds += 1;
            if self.rewinds > MAX_REWINDS {
                return Err(Error::Protocol(
                    "the server keeps asking for the same change sets".into(),
                ));
            }
            tracing::warn!(from, "the server lost change sets; resending them");
            self.report.resent_from = Some(self.report.resent_from.map_or(from, |r: u64| r.min(from)));
            self.total += self.highest_acked.saturating_sub(from - 1);
            self.highest_acked = from - 1;
        }
        if let Some((code, message)) = outcome.refused {
            tracing::warn!(code = code.as_str(), "the server refused a change set");
            return Err(Error::ServerRefused { code, message });
        }
        if remaining == 0 && more == 0 {
            return Ok(Step::Done);
        }
        if !progressed {
            return Err(Error::Protocol("the server's answer made no progress".into()));
        }
        Ok(Step::Build)
    }

    /// The server's position `position` is adopted: `created` change sets
    /// were made again, `remaining` wait to be sent.
    pub fn adopted(&mut self, position: ChainPosition, created: u64, remaining: u64) -> Step {
        self.report.adopted_server_seq = Some(position.seq);
        self.report.change_sets_created += created;
        self.total = self.report.pushed + remaining;
        self.highest_acked = position.seq;
        Step::Build
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crvs_schema::wire::{Ack, AckOutcome};

    fn keys() -> (SigningKey, SigningKey) {
        (SigningKey::from_bytes(&[7; 32]), SigningKey::from_bytes(&[9; 32]))
    }

    fn batch(seqs: &[u64], counter: u64) -> Batch {
        Batch {
            device_id: [1; 16],
            resume: Vec::new(),
            change_sets: seqs
                .iter()
                .map(|&seq| OutgoingChangeSet {
                    seq,
                    hash: [seq as u8; 32],
                    records: 2,
                    bytes: vec![seq as u8; 10],
                })
                .collect(),
            evidence: Vec::new(),
            lineage: [3; 16],
            adopted: None,
            cursor: 0,
            counter,
            device_clock_ms: 1_800_000_000_000,
            report: None,
        }
    }

    fn answer(server: &SigningKey, request: &[u8], acked: &[u64], cursor: u64, more: bool) -> Vec<u8> {
        SyncResponse {
            request_hash: wire::request_hash(request),
            server_time_ms: 0,
            acks: acked
                .iter()
                .map(|&seq| Ack {
                    seq,
                    hash: [seq as u8; 32],
                    outcome: AckOutcome::Applied,
                })
                .collect(),
            refusal: None,
            next_seq: acked.last().map_or(1, |s| s + 1),
            updates: Vec::new(),
            cursor,
            more,
            issuances: Vec::new(),
            chain: ChainPosition {
                seq: acked.last().copied().unwrap_or(0),
                hash: [acked.last().copied().unwrap_or(0) as u8; 32],
            },
            notifications: Vec::new(),
            directory: None,
        }
        .seal(server)
        .expect("seal")
    }

    #[test]
    fn bytes_in_decisions_out_a_push_is_stored_then_done_without_store_or_network() {
        let (server, device) = keys();
        let mut m = SyncMachine::start(server.verifying_key(), device, 0, 2, 2);
        let (request, phase) = m.send(batch(&[1, 2], 1)).unwrap();
        assert_eq!(phase, SyncPhase::Pushing);
        m.sent();
        let step = m
            .on_answer(
                &answer(&server, &request, &[1, 2], 5, false),
                AnswerContext {
                    acked: 0,
                    next_seq: 3,
                },
            )
            .unwrap();
        let Step::Store(d) = step else { panic!("{step:?}") };
        assert_eq!(d.outcome.acked, vec![1, 2]);
        assert_eq!(d.acked_before, 0);
        assert!(matches!(m.stored(Applied::default(), 0).unwrap(), Step::Done));
        let report = m.into_report();
        assert_eq!((report.pushed, report.records_pushed, report.requests), (2, 4, 1));
    }

    #[test]
    fn a_request_that_asks_what_arrived_sends_no_change_set_and_its_answer_is_progress_even_if_none_did() {
        let (server, device) = keys();
        let ctx = AnswerContext {
            acked: 4,
            next_seq: 7,
        };
        let asking = |counter| Batch {
            resume: vec![(5, [5; 32], 2), (6, [6; 32], 3)],
            ..batch(&[], counter)
        };
        // The server holds change set 5, not 6.
        let mut m = SyncMachine::start(server.verifying_key(), device.clone(), 4, 2, 0);
        let (request, phase) = m.send(asking(1)).unwrap();
        assert_eq!(phase, SyncPhase::Pulling, "nothing is pushed");
        let sent = SyncRequest::decode_unverified(&request).unwrap();
        assert!(sent.change_sets.is_empty());
        assert_eq!(sent.resume, Some(wire::SeqRange { from: 5, to: 6 }));
        let Step::Store(d) = m
            .on_answer(&answer(&server, &request, &[5], 0, false), ctx)
            .unwrap()
        else {
            panic!("store")
        };
        assert_eq!(d.outcome.acked, vec![5]);
        assert!(matches!(m.stored(Applied::default(), 1).unwrap(), Step::Build));
        assert_eq!((m.report().pushed, m.report().records_pushed), (1, 2));
        // It holds neither: still progress (the next request sends them).
        let mut m = SyncMachine::start(server.verifying_key(), device.clone(), 4, 2, 0);
        let (request, _) = m.send(asking(2)).unwrap();
        let empty = SyncResponse {
            next_seq: 5,
            chain: ChainPosition {
                seq: 4,
                hash: [4; 32],
            },
            ..SyncResponse::open(&answer(&server, &request, &[], 0, false), &server.verifying_key()).unwrap()
        }
        .seal(&server)
        .unwrap();
        let Step::Store(d) = m.on_answer(&empty, ctx).unwrap() else {
            panic!("store")
        };
        assert!(d.outcome.acked.is_empty());
        assert!(matches!(m.stored(Applied::default(), 2).unwrap(), Step::Build));
        // An acknowledgement naming another hash than the tablet's is refused.
        let mut m = SyncMachine::start(server.verifying_key(), device, 4, 2, 0);
        let (request, _) = m.send(asking(3)).unwrap();
        let mut forged = SyncResponse::open(
            &answer(&server, &request, &[5], 0, false),
            &server.verifying_key(),
        )
        .unwrap();
        forged.acks[0].hash = [9; 32];
        assert!(matches!(
            m.on_answer(&forged.seal(&server).unwrap(), ctx),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn an_answer_to_another_request_or_signed_by_another_key_is_refused() {
        let (server, device) = keys();
        let mut m = SyncMachine::start(server.verifying_key(), device.clone(), 0, 1, 1);
        let (request, _) = m.send(batch(&[1], 1)).unwrap();
        let (other, _) = SyncMachine::start(server.verifying_key(), device.clone(), 0, 1, 1)
            .send(batch(&[1], 2))
            .unwrap();
        let ctx = AnswerContext {
            acked: 0,
            next_seq: 2,
        };
        assert!(matches!(
            m.on_answer(&answer(&server, &other, &[1], 0, false), ctx),
            Err(Error::Protocol(_))
        ));
        let mut m = SyncMachine::start(server.verifying_key(), device.clone(), 0, 1, 1);
        let (request2, _) = m.send(batch(&[1], 1)).unwrap();
        assert_eq!(request, request2, "the same state and batch give the same bytes");
        assert!(
            m.on_answer(&answer(&device, &request2, &[1], 0, false), ctx)
                .is_err()
        );
    }

    #[test]
    fn a_server_ahead_on_the_counter_gets_one_retry_and_an_answer_without_progress_ends_the_sync() {
        let (server, device) = keys();
        let mut m = SyncMachine::start(server.verifying_key(), device, 0, 0, 0);
        m.send(batch(&[], 1)).unwrap();
        assert!(matches!(
            m.on_failure(Error::CounterBehind(41)).unwrap(),
            Step::RaiseCounter(41)
        ));
        m.send(batch(&[], 42)).unwrap();
        assert!(matches!(
            m.on_failure(Error::CounterBehind(50)),
            Err(Error::CounterBehind(50))
        ));

        let (server, device) = keys();
        let mut m = SyncMachine::start(server.verifying_key(), device, 0, 0, 0);
        let (request, phase) = m.send(batch(&[], 1)).unwrap();
        assert_eq!(phase, SyncPhase::Pulling);
        let step = m
            .on_answer(
                &answer(&server, &request, &[], 0, true),
                AnswerContext {
                    acked: 0,
                    next_seq: 1,
                },
            )
            .unwrap();
        assert!(matches!(step, Step::Store(_)));
        assert!(matches!(m.stored(Applied::default(), 0), Err(Error::Protocol(_))));
    }
}
