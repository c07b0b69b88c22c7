//! The sync driver: fills the outbox, pushes unacknowledged change sets,
//! stores the answers, adopts the server's chain, keeps KIdC evidence.

use automerge::AutoCommit;
use crvs_schema::evidence::IssuanceProof;
use crvs_schema::wire::{self, ChainPosition, RecordChanges, SignedChangeSet, SyncResponse};
use crvs_schema::{bounds, record};
use ed25519_dalek::VerifyingKey;
use rusqlite::{Connection, Transaction};

use crate::error::{Error, Result};
use crate::integrity;
use crate::registrar::*;
use crate::store::{self, OutboxRow, RecordRow, meta};
use crate::sync::machine::{AnswerContext, Applied, Batch, Decisions, OutgoingChangeSet, Step, SyncMachine};
use crate::sync::{self, Chain, SyncObserver, SyncPhase, SyncProgress, SyncReport};
use crate::transport::{HttpTransport, Transport};

impl Registrar {
    /// Syncs with the enrolled server over HTTP. See [`Registrar::sync_with`].
    pub fn sync(&self, observer: &dyn SyncObserver) -> Result<SyncReport> {
        let (url, ca) = {
            let conn = lock(&self.conn);
            let e = self.enrolled(&conn)?;
            (e.server_url, e.server_ca)
        };
        let transport = HttpTransport::with_ca(&url, ca.as_deref())?;
        self.sync_pipelined(&transport, observer)
    }

    /// [`Registrar::sync_with`], sending the next request while the last
    /// answer is stored: the server applies one request while the tablet
    /// stores the codes of the one before. It needs a transport that can
    /// be used from a second thread.
    ///
    /// Only a plain answer is overlapped: change sets acknowledged, no
    /// rewind, adoption or refusal, and more change sets waiting. The next
    /// request then carries the answer's cursor and the change sets after
    /// its acknowledgements, exactly as it would have after the store. If
    /// the store fails or the sync is stopped, the request in flight is
    /// waited for and its answer dropped: the server's acknowledgement is
    /// not stored, so the next sync sends those change sets again, and the
    /// server acknowledges them as already applied.
    pub fn sync_pipelined(
        &self,
        transport: &(dyn Transport + Sync),
        observer: &dyn SyncObserver,
    ) -> Result<SyncReport> {
        std::thread::scope(|scope| {
            let send = |request: Vec<u8>| InFlight(scope.spawn(move || transport.sync(&request)));
            self.drive(transport, Some(&send), observer)
        })
    }

    /// Puts new changes into signed change sets, pushes every
    /// unacknowledged change set in order, and applies the server's
    /// updates, over `transport`. Safe to interrupt at any point and to
    /// repeat.
    ///
    /// The decisions are [`SyncMachine`]'s; this is its driver, the store
    /// and `transport` at its edges.
    pub fn sync_with(&self, transport: &dyn Transport, observer: &dyn SyncObserver) -> Result<SyncReport> {
        self.drive(transport, None, observer)
    }

    /// The sync loop; `ahead` sends a request on another thread (see
    /// [`Registrar::sync_pipelined`]).
    fn drive<'s>(
        &self,
        transport: &dyn Transport,
        ahead: Option<&dyn Fn(Vec<u8>) -> InFlight<'s>>,
        observer: &dyn SyncObserver,
    ) -> Result<SyncReport> {
        let _one_sync_at_a_time = lock(&self.sync_lock);
        let enrolled = {
            let conn = lock(&self.conn);
            // Nothing leaves a store that was edited around its
            // encryption: its server key or its bookkeeping may be forged.
            integrity::ensure_intact(&conn, integrity::Scope::All)?;
            self.enrolled(&conn)?
        };
        // New changes into the outbox, in one transaction.
        let created = self.fill_outbox(&enrolled)?;
        let (acked, waiting) = {
            let conn = lock(&self.conn);
            let acked = Self::acked_seq(&conn)?;
            (acked, store::count_outbox_after(&conn, acked)?)
        };
        let mut machine = SyncMachine::start(
            enrolled.server_key,
            enrolled.signing_key.clone(),
            acked,
            waiting,
            created,
        );
        let progress = |phase, m: &SyncMachine| {
            let report = m.report();
            sync::notify(
                observer,
                SyncProgress {
                    phase,
                    pushed: report.pushed,
                    total: m.total(),
                    pulled: report.pulled,
                },
            )
        };
        if progress(SyncPhase::Preparing, &machine).is_break() {
            machine.cancel();
            return self.finish(machine.into_report());
        }
        let mut step = Step::Build;
        // A request sent ahead, while the answer before it was stored.
        let mut in_flight: Option<InFlight<'s>> = None;
        // The last sync lost an answer: first ask what arrived.
        let mut ask = self.unanswered()?;
        loop {
            step = match step {
                Step::Build => {
                    let sent = match in_flight.take() {
                        Some(request) => request.answer(),
                        None => {
                            let batch = self.next_batch(&enrolled, None, ask.take().unwrap_or_default())?;
                            let (request, phase) = machine.send(batch)?;
                            if progress(phase, &machine).is_break() {
                                machine.cancel();
                                break;
                            }
                            machine.sent();
                            transport.sync(&request)
                        }
                    };
                    match sent {
                        Ok(answer) => {
                            crate::fault::point("after_answer");
                            let ctx = self.answer_context()?;
                            machine.on_answer(&answer, ctx)?
                        }
                        Err(e) => machine.on_failure(e)?,
                    }
                }
                Step::RaiseCounter(last) => {
                    self.raise_request_counter(last)?;
                    Step::Build
                }
                Step::Store(decisions) => {
                    if let Some(send) = ahead
                        && let Some(after) = self.can_send_ahead(&decisions)?
                    {
                        let batch =
                            self.next_batch(&enrolled, Some((after, decisions.response.cursor)), Vec::new())?;
                        let (request, _) = machine.send(batch)?;
                        machine.sent();
                        in_flight = Some(send(request));
                    }
                    let applied = self.store_answer(
                        &decisions.response,
                        &decisions.outcome,
                        decisions.acked_before,
                        &enrolled.server_key,
                        &enrolled.signing_key.verifying_key(),
                        in_flight.is_some(),
                    )?;
                    let remaining = self.remaining()?;
                    let next = machine.stored(applied, remaining)?;
                    if !matches!(next, Step::Adopt(_)) && progress(SyncPhase::Pulling, &machine).is_break() {
                        machine.cancel();
                        break;
                    }
                    if in_flight.is_some() && !matches!(next, Step::Build) {
                        return Err(Error::Protocol(
                            "a request was sent ahead of an answer that ended the sync".into(),
                        ));
                    }
                    next
                }
                Step::Adopt(position) => {
                    let records = self.adopt(position)?;
                    tracing::warn!(
                        server_seq = position.seq,
                        records,
                        "this tablet's chain disagreed with the server's (a lost commit, or an old copy of the store): adopted the server's position; sending its records again"
                    );
                    let created = self.fill_outbox(&enrolled)?;
                    let remaining = self.remaining()?;
                    machine.adopted(position, created, remaining)
                }
                Step::Done => break,
            };
        }
        if !machine.report().cancelled {
            let conn = &mut *lock(&self.conn);
            let tx = conn.transaction()?;
            store::set_meta(&tx, meta::LAST_SYNC_AT, now_ms())?;
            tx.commit()?;
            let _ = progress(SyncPhase::Done, &machine);
        }
        self.finish(machine.into_report())
    }

    /// Whether the next request may leave before `d` is stored, and after
    /// which sequence number its change sets start: only after a plain
    /// answer (acknowledgements, nothing to rewind, adopt or refuse, no
    /// adoption still to announce) with change sets waiting after it.
    fn can_send_ahead(&self, d: &Decisions) -> Result<Option<u64>> {
        let o = &d.outcome;
        let Some(&last) = o.acked.iter().max() else {
            return Ok(None);
        };
        if o.rewind_to.is_some() || o.adopt.is_some() || o.refused.is_some() || !o.set_aside.is_empty() {
            return Ok(None);
        }
        let conn = lock(&self.conn);
        if store::get_meta::<Vec<u8>>(&conn, meta::ADOPTED)?.is_some_and(|b| !b.is_empty()) {
            return Ok(None);
        }
        let after = last.max(d.acked_before);
        Ok((store::count_outbox_after(&conn, after)? > 0).then_some(after))
    }

    /// Change sets not yet acknowledged.
    fn remaining(&self) -> Result<u64> {
        let conn = lock(&self.conn);
        store::count_outbox_after(&conn, Self::acked_seq(&conn)?)
    }

    /// What an answer is checked against: the acknowledged sequence number
    /// and the chain's next one.
    fn answer_context(&self) -> Result<AnswerContext> {
        let conn = lock(&self.conn);
        Ok(AnswerContext {
            acked: Self::acked_seq(&conn)?,
            next_seq: store::get_meta::<i64>(&conn, meta::NEXT_SEQ)?.unwrap_or(1).max(1) as u64,
        })
    }

    /// Reads the next run of unacknowledged change sets and what goes
    /// with them, and takes the request counter (durably).
    /// `ahead`: the batch is sent before the answer before it is stored;
    /// the change sets after this sequence number, and this cursor (the
    /// answer's), are what the store will hold.
    ///
    /// `ask`: change sets sent before whose answer was lost; the request
    /// asks about them and sends none.
    fn next_batch(
        &self,
        enrolled: &Enrolled,
        ahead: Option<(u64, u64)>,
        ask: Vec<(u64, wire::Hash, u64)>,
    ) -> Result<Batch> {
        let conn = lock(&self.conn);
        let acked = match ahead {
            Some((after, _)) => after,
            None => Self::acked_seq(&conn)?,
        };
        let rows = if ask.is_empty() {
            store::outbox_from(&conn, acked + 1, sync::MAX_CHANGE_SETS_PER_REQUEST)?
        } else {
            tracing::info!(
                change_sets = ask.len(),
                "the last sync lost an answer: asking the server what arrived"
            );
            Vec::new()
        };
        let lengths: Vec<u64> = rows.iter().map(|r| r.byte_len).collect();
        let n = sync::take_for_request(
            &lengths,
            sync::MAX_CHANGE_SETS_PER_REQUEST,
            sync::MAX_REQUEST_BYTES,
        );
        let mut change_sets = Vec::with_capacity(n);
        for row in rows.into_iter().take(n) {
            let bytes = self.key.open(&outbox_aad(row.seq), &row.body_sealed)?;
            change_sets.push(OutgoingChangeSet {
                seq: row.seq,
                hash: row.hash,
                records: row.record_count,
                bytes: bytes.to_vec(),
            });
        }
        let raw: Vec<Vec<u8>> = change_sets.iter().map(|c| c.bytes.clone()).collect();
        let evidence = self.evidence_for(&conn, &raw, enrolled)?;
        drop(conn);
        // Read for every request: an adoption makes a new one.
        let lineage = self.lineage()?;
        let conn = lock(&self.conn);
        let adopted = store::get_meta::<Vec<u8>>(&conn, meta::ADOPTED)?.and_then(|b| decode_position(&b));
        let cursor = match ahead {
            Some((_, cursor)) => cursor,
            None => store::get_meta::<i64>(&conn, meta::CURSOR)?.unwrap_or(0).max(0) as u64,
        };
        // What waits behind this request: once it is taken, the server
        // knows the backlog that is left (0 after a sync that sent all).
        let behind = change_sets.last().map_or(acked, |c| c.seq);
        let report = wire::TabletReport {
            change_sets_waiting: store::count_outbox_after(&conn, behind)?,
            records_waiting: store::count_records_waiting(&conn, behind)?,
            app_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        drop(conn);
        let counter = self.next_request_counter(change_sets.last().map(|c| c.seq))?;
        Ok(Batch {
            device_id: enrolled.device_id,
            resume: ask,
            change_sets,
            evidence,
            lineage,
            adopted,
            cursor,
            counter,
            device_clock_ms: now_ms(),
            report: Some(report),
        })
    }

    /// Takes the next request counter, durably, before the request leaves:
    /// a request the server accepted is never followed by one with a
    /// counter at or below it, even after a crash. With it, the highest
    /// change set the request sends (`sent_up_to`).
    fn next_request_counter(&self, sent_up_to: Option<u64>) -> Result<u64> {
        let conn = &mut *lock(&self.conn);
        let tx = conn.transaction()?;
        let last = store::get_meta::<i64>(&tx, meta::REQUEST_COUNTER)?
            .unwrap_or(0)
            .max(0) as u64;
        let next = last + 1;
        store::set_meta(&tx, meta::REQUEST_COUNTER, next as i64)?;
        if let Some(seq) = sent_up_to {
            let before = store::get_meta::<i64>(&tx, meta::SENT_UP_TO)?.unwrap_or(0);
            store::set_meta(&tx, meta::SENT_UP_TO, before.max(seq as i64))?;
        }
        tx.commit()?;
        Ok(next)
    }

    /// The change sets sent before and not acknowledged, when the last
    /// sync lost an answer (sequence number, hash, records; at most
    /// [`wire::MAX_RESUME_SEQS`]); `None` otherwise.
    #[allow(clippy::type_complexity)]
    fn unanswered(&self) -> Result<Option<Vec<(u64, wire::Hash, u64)>>> {
        let conn = lock(&self.conn);
        let acked = Self::acked_seq(&conn)?;
        let sent = store::get_meta::<i64>(&conn, meta::SENT_UP_TO)?
            .unwrap_or(0)
            .max(0) as u64;
        if sent <= acked {
            return Ok(None);
        }
        let n = (sent - acked).min(wire::MAX_RESUME_SEQS) as usize;
        let rows: Vec<_> = store::outbox_from(&conn, acked + 1, n)?
            .into_iter()
            .map(|r| (r.seq, r.hash, r.record_count))
            .collect();
        // Contiguous from the first unacknowledged one, or nothing to ask.
        let contiguous = rows.iter().enumerate().all(|(i, r)| r.0 == acked + 1 + i as u64);
        Ok((contiguous && !rows.is_empty()).then_some(rows))
    }

    /// Moves the request counter up to `last` (never down).
    fn raise_request_counter(&self, last: u64) -> Result<()> {
        let conn = &mut *lock(&self.conn);
        let tx = conn.transaction()?;
        let mine = store::get_meta::<i64>(&tx, meta::REQUEST_COUNTER)?
            .unwrap_or(0)
            .max(0) as u64;
        store::set_meta(&tx, meta::REQUEST_COUNTER, mine.max(last) as i64)?;
        tx.commit()?;
        Ok(())
    }

    fn finish(&self, mut report: SyncReport) -> Result<SyncReport> {
        let conn = lock(&self.conn);
        let acked = Self::acked_seq(&conn)?;
        report.pending = store::count_outbox_after(&conn, acked)?;
        report.records_pending = store::count_records_waiting(&conn, acked)?;
        Ok(report)
    }

    /// Batches every record's new local changes into signed change sets in
    /// the outbox, in one transaction. Returns how many were made.
    fn fill_outbox(&self, enrolled: &Enrolled) -> Result<u64> {
        let now = now_ms();
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        // Every record's sealed document is compared with the heads already
        // put into change sets: the `dirty` flag only says which records
        // show as pending, it does not decide what is sent.
        let candidates = store::unsent_candidates(&tx)?;
        let mut changes = Vec::new();
        let mut rows = std::collections::HashMap::new();
        // Opening every document is most of the work: on every core.
        let outgoing = sync::par_map(candidates, |row| {
            let out = self.outgoing(&row);
            (row, out)
        });
        for (mut row, out) in outgoing {
            let Some((heads, mine)) = out? else {
                continue;
            };
            if !row.dirty && !mine.is_empty() {
                tracing::warn!(record = %RecordId(row.id), "unsent changes found in a record not marked for sending");
            }
            row.outboxed_heads = heads;
            row.dirty = false;
            if mine.is_empty() {
                store::update_record(&tx, &row)?;
                continue;
            }
            changes.push(RecordChanges {
                record_id: row.id,
                changes: mine,
            });
            rows.insert(row.id, row);
        }
        if changes.is_empty() {
            tx.commit()?;
            return Ok(0);
        }
        let mut chain = Chain {
            next_seq: store::get_meta::<i64>(&tx, meta::NEXT_SEQ)?.unwrap_or(1).max(1) as u64,
            last_hash: store::require_meta::<Vec<u8>>(&tx, meta::LAST_HASH)?
                .try_into()
                .map_err(|_| Error::Corrupt("the stored hash chain is malformed".into()))?,
        };
        let batches = sync::batch(
            changes,
            sync::MAX_RECORDS_PER_CHANGE_SET,
            sync::MAX_RAW_BYTES_PER_CHANGE_SET,
        );
        let members: Vec<Vec<[u8; 16]>> = batches
            .iter()
            .map(|b| b.iter().map(|r| r.record_id).collect())
            .collect();
        let signed = sync::seal_batches(
            &mut chain,
            &enrolled.signing_key,
            enrolled.device_id,
            now,
            batches,
        )?;
        let made = signed.len() as u64;
        for (cs, ids) in signed.into_iter().zip(members) {
            let seq = cs.seq();
            let hash = cs.hash();
            let bytes = cs.into_bytes();
            store::insert_outbox(
                &tx,
                &OutboxRow {
                    seq,
                    hash,
                    byte_len: bytes.len() as u64,
                    body_sealed: self.key.seal(&outbox_aad(seq), &bytes),
                    record_count: ids.len() as u64,
                    created_at: now,
                    acked_at: None,
                },
            )?;
            for id in ids {
                if let Some(mut row) = rows.remove(&id) {
                    row.last_outbox_seq = Some(seq);
                    store::update_record(&tx, &row)?;
                }
            }
        }
        store::set_meta(&tx, meta::NEXT_SEQ, chain.next_seq as i64)?;
        store::set_meta(&tx, meta::LAST_HASH, chain.last_hash.to_vec())?;
        crate::fault::point("before_outbox_commit");
        tx.commit()?;
        tracing::info!(change_sets = made, "change sets added to the outbox");
        Ok(made)
    }

    /// A record's current heads and the changes of this tablet not yet put
    /// into a change set; `None` when it has nothing new.
    #[allow(clippy::type_complexity)]
    fn outgoing(&self, row: &RecordRow) -> Result<Option<(Vec<u8>, Vec<Vec<u8>>)>> {
        let bytes = self.key.open(&doc_aad(&row.id), &row.doc_sealed)?;
        // A record never put into a change set, stored uncompressed and
        // holding only this store's changes (so none of the server's): its
        // stored bytes are the document chunk it travels as, and its
        // header names its heads. Nothing to load. (The server loads and
        // checks it either way.)
        if row.outboxed_heads.is_empty()
            && let Some(header) = bounds::document_header(&bytes)
            && !header.deflated
            && header.actors == [self.actor.to_bytes()]
        {
            return Ok(Some((header.heads.concat(), vec![bytes.to_vec()])));
        }
        self.outgoing_by_loading(row, &bytes)
    }

    /// [`Self::outgoing`] for any record: loads its document `bytes`.
    #[allow(clippy::type_complexity)]
    fn outgoing_by_loading(&self, row: &RecordRow, bytes: &[u8]) -> Result<Option<(Vec<u8>, Vec<Vec<u8>>)>> {
        let mut doc = AutoCommit::load(bytes)?.with_actor(self.actor.clone());
        let heads = heads_to_bytes(&doc.get_heads());
        if !row.dirty && heads == row.outboxed_heads {
            return Ok(None);
        }
        let since = heads_from_bytes(&row.outboxed_heads)?;
        // Only this tablet's own changes: the server's came from it.
        let new_changes = doc.get_changes(&since);
        let first_time = since.is_empty() && new_changes.iter().all(|c| c.actor_id() == &self.actor);
        let mine: Vec<Vec<u8>> = if first_time && !new_changes.is_empty() {
            // A record the server has never seen travels as one
            // document chunk: its changes' dependencies become indices
            // instead of 32-byte hashes (see `record::decode_changes`).
            vec![doc.save_nocompress()]
        } else {
            new_changes
                .into_iter()
                .filter(|c| c.actor_id() == &self.actor)
                .map(|c| c.raw_bytes().to_vec())
                .collect()
        };
        Ok(Some((heads, mine)))
    }

    /// Stores an answer in one transaction: acknowledgements, a rewind,
    /// the server's updates and the new cursor. `sent_ahead`: another
    /// request is in flight, whose change sets stay to be asked about if
    /// its answer is lost.
    fn store_answer(
        &self,
        resp: &SyncResponse,
        outcome: &sync::Outcome,
        acked_before: u64,
        server_key: &VerifyingKey,
        own_key: &VerifyingKey,
        sent_ahead: bool,
    ) -> Result<Applied> {
        let now = now_ms();
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        let mut acked = acked_before;
        for &seq in &outcome.acked {
            store::mark_acked(&tx, seq, now)?;
            acked = acked.max(seq);
        }
        for &seq in &outcome.set_aside {
            // The records it carried are set aside: decoded from this
            // tablet's own copy of the change set.
            if let Some(row) = store::outbox_from(&tx, seq, 1)?
                .into_iter()
                .find(|r| r.seq == seq)
            {
                let bytes = self.key.open(&outbox_aad(seq), &row.body_sealed)?;
                let ids: Vec<[u8; 16]> = SignedChangeSet::from_bytes(bytes.to_vec())?
                    .open(own_key)
                    .map(|cs| cs.records.iter().map(|r| r.record_id).collect())
                    .unwrap_or_default();
                tracing::warn!(
                    seq,
                    records = ids.len(),
                    "the server set a change set aside; its records must be registered again"
                );
                store::mark_set_aside(&tx, &ids, now)?;
            }
        }
        if let Some(from) = outcome.rewind_to {
            store::unack_from(&tx, from)?;
            acked = from - 1;
        }
        store::set_meta(&tx, meta::ACKED_SEQ, acked as i64)?;
        if !sent_ahead {
            // Every request sent has its answer now: nothing to ask about
            // at the next sync (a change set refused or not taken is sent
            // again, not asked about).
            store::set_meta(&tx, meta::SENT_UP_TO, acked as i64)?;
        }
        let mut applied = Applied::default();
        let mut seen = std::collections::HashSet::new();
        if resp.updates.iter().all(|u| seen.insert(u.record_id)) {
            // One update per record (as the server sends them): merged on
            // every core, stored in order.
            let mut known = Vec::new();
            for update in &resp.updates {
                match store::get_record(&tx, &update.record_id)? {
                    Some(row) => known.push((row, update)),
                    None => self.receive_office_record(&tx, update, now, &mut applied)?,
                }
            }
            for merged in sync::par_map(known, |(row, update)| self.merge_update(row, update, now)) {
                if let Some((row, kidc_arrived)) = merged? {
                    store::update_record(&tx, &row)?;
                    applied.updated += 1;
                    applied.kidcs += u64::from(kidc_arrived);
                }
            }
        } else {
            for update in &resp.updates {
                self.apply_update(&tx, update, now, &mut applied)?;
            }
        }
        self.keep_evidence(&tx, &resp.issuances, server_key)?;
        self.keep_notifications(&tx, &resp.notifications)?;
        if let Some(directory) = &resp.directory {
            self.keep_directory(&tx, directory)?;
        }
        store::set_meta(&tx, meta::CURSOR, resp.cursor as i64)?;
        store::set_meta(&tx, meta::LAST_SERVER_TIME, resp.server_time_ms)?;
        if resp
            .refusal
            .as_ref()
            .is_none_or(|r| r.code != wire::RefusalCode::ClonedStore)
        {
            // The server took a request of this lineage: the adoption is done.
            store::set_meta(&tx, meta::ADOPTED, Vec::<u8>::new())?;
        }
        tx.commit()?;
        Ok(applied)
    }

    fn apply_update(
        &self,
        tx: &Transaction<'_>,
        update: &wire::RecordUpdate,
        now: i64,
        applied: &mut Applied,
    ) -> Result<()> {
        let Some(row) = store::get_record(tx, &update.record_id)? else {
            return self.receive_office_record(tx, update, now, applied);
        };
        if let Some((row, kidc_arrived)) = self.merge_update(row, update, now)? {
            store::update_record(tx, &row)?;
            applied.updated += 1;
            applied.kidcs += u64::from(kidc_arrived);
        }
        Ok(())
    }

    /// `row` with the server's changes of `update` merged in, and whether
    /// its KIdC arrived with them; `None` when they change nothing.
    fn merge_update(
        &self,
        row: RecordRow,
        update: &wire::RecordUpdate,
        now: i64,
    ) -> Result<Option<(RecordRow, bool)>> {
        if let Some(appended) = self.append_first_server_part(&row, update, now)? {
            return Ok(Some(appended));
        }
        self.merge_by_loading(row, update, now)
    }

    /// [`Self::merge_update`] for any update: loads the document, merges,
    /// reads the result and saves it.
    fn merge_by_loading(
        &self,
        mut row: RecordRow,
        update: &wire::RecordUpdate,
        now: i64,
    ) -> Result<Option<(RecordRow, bool)>> {
        let id = RecordId(update.record_id);
        let mut doc = self.load_doc(&row)?;
        let before = doc.get_heads();
        // Changes of the server and of the office's other tablets, or a
        // record's whole document (a snapshot): all load incrementally.
        for bytes in &update.changes {
            doc.load_incremental(bytes)
                .map_err(|_| Error::Protocol("the server sent a change that does not apply".into()))?;
        }
        if doc.get_heads() == before {
            return Ok(None);
        }
        if !doc.get_missing_deps(&[]).is_empty() {
            tracing::warn!(record = %id, "server changes wait for changes this store lacks");
        }
        let view = record::read(&doc)?;
        let mut kidc_arrived = false;
        if let Some(kidc) = &view.server.kidc {
            kidc_arrived = row.kidc_sealed.is_none();
            row.kidc_sealed = Some(self.key.seal(&kidc_aad(&row.id), kidc.as_str().as_bytes()));
        }
        row.status = merged_status(&view).as_str().to_string();
        row.doc_sealed = self.seal_doc(&row.id, &mut doc);
        row.server_updated_at = Some(now);
        Ok(Some((row, kidc_arrived)))
    }

    /// [`Self::merge_update`] without loading the document, in the common
    /// case of the answer to an approved record's first sync: the update
    /// is one change of the server that does nothing but write the
    /// record's first server part (`record::first_server_part`), made on
    /// exactly the document this store holds (its dependencies are the
    /// stored document's heads), and the stored document holds only this
    /// store's changes, so no server part. The change is stored after the
    /// document (automerge loads a document followed by changes as one,
    /// and the next full merge saves them as one document again); the
    /// status and the KIdC are what the full merge would read, as
    /// `tests::a_first_server_part_is_stored_as_the_full_merge_stores_it`
    /// checks. `None` for any other update: the full merge decides.
    fn append_first_server_part(
        &self,
        row: &RecordRow,
        update: &wire::RecordUpdate,
        now: i64,
    ) -> Result<Option<(RecordRow, bool)>> {
        let approved = crvs_schema::workflow::Status::Approved;
        let [bytes] = update.changes.as_slice() else {
            return Ok(None);
        };
        if row.status != approved.as_str() || record::is_document_chunk(bytes) {
            return Ok(None);
        }
        // Checks the change's checksum, as loading it would.
        let Ok(changes) = record::decode_changes(bytes) else {
            return Ok(None);
        };
        let [change] = changes.as_slice() else {
            return Ok(None);
        };
        let Some(part) = record::first_server_part(change) else {
            return Ok(None);
        };
        let mut doc = self.key.open(&doc_aad(&row.id), &row.doc_sealed)?;
        let Some(header) = bounds::document_header(&doc) else {
            return Ok(None);
        };
        let mut deps: Vec<[u8; 32]> = change.deps().iter().map(|h| h.0).collect();
        deps.sort_unstable();
        if header.actors != [self.actor.to_bytes()] || deps != header.heads {
            return Ok(None);
        }
        doc.extend_from_slice(bytes);
        let mut row = row.clone();
        let kidc_arrived = part.kidc.is_some() && row.kidc_sealed.is_none();
        if let Some(kidc) = &part.kidc {
            row.kidc_sealed = Some(self.key.seal(&kidc_aad(&row.id), kidc.as_str().as_bytes()));
        }
        row.status = part.status_over(approved).as_str().to_string();
        row.doc_sealed = self.key.seal(&doc_aad(&row.id), &doc);
        row.server_updated_at = Some(now);
        Ok(Some((row, kidc_arrived)))
    }

    /// Keeps the office's pending notifications as the answer lists them,
    /// sealed (the list replaces the one before: a registered one is gone).
    fn keep_notifications(&self, tx: &Transaction<'_>, list: &[wire::PendingNotification]) -> Result<()> {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|n| {
                serde_json::json!({
                    "notification_id": uuid::Uuid::from_bytes(n.notification_id).to_string(),
                    "kind": n.kind,
                    "received_at_ms": n.received_at_ms,
                    "notification": serde_json::from_str::<serde_json::Value>(&n.payload)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect();
        let bytes = serde_json::to_vec(&items).map_err(|e| Error::Storage(e.to_string()))?;
        let sealed = self.key.seal(crate::registrar::NOTIFICATIONS_AAD, &bytes);
        store::set_meta(tx, meta::NOTIFICATIONS, sealed)?;
        Ok(())
    }

    /// A record of the office this store does not have: made on another
    /// tablet of the office (or before this tablet replaced a lost one).
    /// It is stored as received, with nothing to send: only the changes
    /// this store makes to it later are sent.
    fn receive_office_record(
        &self,
        tx: &Transaction<'_>,
        update: &wire::RecordUpdate,
        now: i64,
        applied: &mut Applied,
    ) -> Result<()> {
        let id = RecordId(update.record_id);
        let mut doc = AutoCommit::new();
        for bytes in &update.changes {
            doc.load_incremental(bytes)
                .map_err(|_| Error::Protocol("the server sent a record that does not load".into()))?;
        }
        let mut doc = doc.with_actor(self.actor.clone());
        let view = match record::read(&doc) {
            Ok(v) => v,
            Err(e) => {
                // The start of its history is missing: a feed this store
                // joined late. Nothing is stored; the server's snapshot has it.
                tracing::warn!(record = %id, "the server sent changes of a record this store does not have ({e})");
                return Ok(());
            }
        };
        if view.office != self.office {
            tracing::warn!(record = %id, "the server sent a record of another office; ignored");
            return Ok(());
        }
        let kidc_sealed = view
            .server
            .kidc
            .as_ref()
            .map(|k| self.key.seal(&kidc_aad(&id.0), k.as_str().as_bytes()));
        let created_at = view.transitions.first().map_or(now, |t| t.at_ms);
        let row = RecordRow {
            id: id.0,
            kind: view.kind.as_str().to_string(),
            status: merged_status(&view).as_str().to_string(),
            created_at,
            updated_at: now,
            doc_sealed: self.seal_doc(&id.0, &mut doc),
            kidc_sealed,
            outboxed_heads: heads_to_bytes(&doc.get_heads()),
            dirty: false,
            last_outbox_seq: None,
            server_updated_at: Some(now),
            set_aside_at: None,
        };
        store::insert_record(tx, &row)?;
        applied.received += 1;
        if view.server.kidc.is_some() {
            applied.kidcs += 1;
        }
        tracing::debug!(record = %id, "record of the office received");
        Ok(())
    }
}

/// The status of a record after a merge. Steps taken concurrently on two
/// tablets of the office (two verifications, an approval and a rejection)
/// can break the workflow's order: such a record is shown held (the server
/// holds it, `invalid_workflow`) with every step kept, and the sync goes on.
fn merged_status(view: &record::RecordView) -> crvs_schema::workflow::Status {
    view.status().unwrap_or(crvs_schema::workflow::Status::Held)
}

fn encode_position(p: &ChainPosition) -> Vec<u8> {
    let mut v = p.seq.to_be_bytes().to_vec();
    v.extend_from_slice(&p.hash);
    v
}

fn decode_position(b: &[u8]) -> Option<ChainPosition> {
    if b.len() != 40 {
        return None;
    }
    Some(ChainPosition {
        seq: u64::from_be_bytes(b[..8].try_into().ok()?),
        hash: b[8..].try_into().ok()?,
    })
}

impl Registrar {
    /// The store's lineage, made on first use.
    fn lineage(&self) -> Result<[u8; 16]> {
        let conn = &mut *lock(&self.conn);
        if let Some(l) = store::get_meta::<Vec<u8>>(conn, meta::LINEAGE)?
            && let Ok(l) = <[u8; 16]>::try_from(l.as_slice())
        {
            return Ok(l);
        }
        let lineage: [u8; 16] = rand::random();
        let tx = conn.transaction()?;
        store::set_meta(&tx, meta::LINEAGE, lineage.to_vec())?;
        tx.commit()?;
        Ok(lineage)
    }

    /// Adopts the server's chain position, in one transaction: the change
    /// sets after the last acknowledged one are dropped (the server never
    /// applied them as they are), their records are marked to be sent
    /// again in full (the server keeps what it already has), the chain
    /// continues from the server's position, and the store takes a new
    /// lineage. Returns how many records will be sent again.
    fn adopt(&self, position: ChainPosition) -> Result<u64> {
        let conn = &mut *lock(&self.conn);
        let tx = conn.transaction()?;
        let acked = Self::acked_seq(&tx)?;
        if position.seq < acked {
            return Err(Error::Protocol(
                "the server's chain is behind this tablet's and differs from it".into(),
            ));
        }
        let records = store::forget_unacknowledged(&tx, acked)?;
        let lineage: [u8; 16] = rand::random();
        store::set_meta(&tx, meta::ACKED_SEQ, position.seq as i64)?;
        store::set_meta(&tx, meta::NEXT_SEQ, position.seq as i64 + 1)?;
        store::set_meta(&tx, meta::LAST_HASH, position.hash.to_vec())?;
        store::set_meta(&tx, meta::LINEAGE, lineage.to_vec())?;
        store::set_meta(&tx, meta::ADOPTED, encode_position(&position))?;
        store::record_adoption(&tx, position.seq, &position.hash, now_ms())?;
        tx.commit()?;
        Ok(records)
    }

    /// The proofs of the KIdCs held by records of `change_sets` (this
    /// tablet's own, about to be sent): after a restore from backup the
    /// server records those codes again instead of drawing new ones.
    /// Nothing to decode while the tablet holds no proof at all.
    fn evidence_for(
        &self,
        conn: &Connection,
        change_sets: &[Vec<u8>],
        enrolled: &Enrolled,
    ) -> Result<Vec<IssuanceProof>> {
        if change_sets.is_empty() || store::count_evidence(conn)? == 0 {
            return Ok(Vec::new());
        }
        let own_key = enrolled.signing_key.verifying_key();
        let mut seen = std::collections::HashSet::new();
        let mut proofs = Vec::new();
        for bytes in change_sets {
            let cs = SignedChangeSet::from_bytes(bytes.clone())?.open(&own_key)?;
            for rc in cs.records {
                if !seen.insert(rc.record_id) {
                    continue;
                }
                if let Some(sealed) = store::get_evidence(conn, &rc.record_id)? {
                    let plain = self.key.open(&evidence_aad(&rc.record_id), &sealed)?;
                    let proof = IssuanceProof::from_bytes(&plain)
                        .ok_or_else(|| Error::Corrupt("a stored KIdC proof is malformed".into()))?;
                    proofs.push(proof);
                }
            }
        }
        Ok(proofs)
    }

    /// Keeps the server's proofs of codes this tablet's records hold: only
    /// proofs that verify with the pinned server key, for a record that
    /// holds exactly that code.
    fn keep_evidence(
        &self,
        tx: &Transaction<'_>,
        proofs: &[IssuanceProof],
        server_key: &VerifyingKey,
    ) -> Result<()> {
        for (proof, checked) in proofs.iter().zip(IssuanceProof::verify_all(proofs, server_key)) {
            let Ok(kidc) = checked else {
                tracing::warn!("the server sent a KIdC proof that does not verify; ignored");
                continue;
            };
            let Some(row) = store::get_record(tx, &proof.record_id)? else {
                continue;
            };
            let held = match &row.kidc_sealed {
                Some(sealed) => self.key.open(&kidc_aad(&row.id), sealed)?,
                None => continue,
            };
            if held.as_slice() != kidc.as_str().as_bytes() {
                tracing::warn!(record = %RecordId(row.id), "a KIdC proof names another code than the record holds; ignored");
                continue;
            }
            store::put_evidence(
                tx,
                &row.id,
                &self.key.seal(&evidence_aad(&row.id), &proof.to_bytes()),
            )?;
        }
        Ok(())
    }
}

/// A request sent ahead on another thread: its answer when the thread
/// ends.
pub(crate) struct InFlight<'s>(std::thread::ScopedJoinHandle<'s, Result<Vec<u8>>>);

impl InFlight<'_> {
    /// Waits for the answer.
    fn answer(self) -> Result<Vec<u8>> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(Error::Protocol("the request sent ahead failed".into())))
    }
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;
    use automerge::transaction::Transactable;
    use crvs_schema::record::Registration;

    use super::*;
    use crate::crypto::KdfParams;

    fn store() -> (tempfile::TempDir, Registrar) {
        let dir = tempfile::tempdir().unwrap();
        let r = Registrar::init_with_kdf(
            dir.path(),
            &"correct horse battery staple".into(),
            "171003",
            KdfParams::INSECURE_FOR_TESTS,
        )
        .unwrap();
        (dir, r)
    }

    fn birth() -> String {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/birth-sok-dara.json"
        ))
        .unwrap()
    }

    fn row(r: &Registrar, id: &RecordId) -> RecordRow {
        store::get_record(&lock(&r.conn), &id.0).unwrap().unwrap()
    }

    /// A birth entered, verified and approved; `verified` stops before
    /// the approval.
    fn entered(r: &Registrar, verified: bool) -> RecordId {
        let id = r.register_birth(&birth(), "clerk-01").unwrap();
        r.verify(&id, "clerk-02").unwrap();
        if !verified {
            r.approve(&id, "registrar-01").unwrap();
        }
        id
    }

    /// One change of the server (actor 9) to the record as `row` holds it.
    fn server_change(
        r: &Registrar,
        row: &RecordRow,
        edit: impl FnOnce(&mut AutoCommit),
    ) -> wire::RecordUpdate {
        let mut doc = r.load_doc(row).unwrap().with_actor(ActorId::from([9u8; 16]));
        edit(&mut doc);
        doc.commit();
        wire::RecordUpdate {
            record_id: row.id,
            changes: vec![doc.get_last_local_change().unwrap().raw_bytes().to_vec()],
        }
    }

    fn registration(kidc: bool) -> impl FnOnce(&mut AutoCommit) {
        move |doc| {
            let kidc = kidc
                .then(|| crvs_schema::Kidc::generate(crvs_schema::kidc::Category::CITIZEN, &mut rand::rng()));
            let r = Registration {
                kidc,
                number: "171003/2026/000001".into(),
                at_ms: 1_780_000_000_000,
                late: false,
            };
            record::set_registration(doc, &r).unwrap();
        }
    }

    /// The two rows hold the same record: the same columns, and documents
    /// that load to the same heads and read the same.
    fn assert_same(r: &Registrar, a: &RecordRow, b: &RecordRow) {
        assert_eq!(a.status, b.status);
        let kidc = |row: &RecordRow| {
            row.kidc_sealed
                .as_ref()
                .map(|k| r.key.open(&kidc_aad(&row.id), k).unwrap().to_vec())
        };
        assert_eq!(kidc(a), kidc(b));
        assert_eq!(
            (
                a.outboxed_heads.clone(),
                a.dirty,
                a.server_updated_at,
                a.updated_at
            ),
            (
                b.outboxed_heads.clone(),
                b.dirty,
                b.server_updated_at,
                b.updated_at
            )
        );
        let (mut da, mut db) = (r.load_doc(a).unwrap(), r.load_doc(b).unwrap());
        assert_eq!(da.get_heads(), db.get_heads());
        assert_eq!(record::read(&da).unwrap(), record::read(&db).unwrap());
        assert_eq!(
            record::read(&da).unwrap().status().unwrap().as_str(),
            a.status,
            "the status column is the document's"
        );
    }

    #[test]
    fn a_first_server_part_is_stored_as_the_full_merge_stores_it() {
        let (_dir, r) = store();
        let hold = |doc: &mut AutoCommit| record::set_hold(doc, "invalid_on_receipt").unwrap();
        type Edit = Box<dyn FnOnce(&mut AutoCommit)>;
        let edits: Vec<(bool, Edit)> = vec![
            (false, Box::new(registration(true))),
            (false, Box::new(registration(false))),
            (false, Box::new(hold)),
            // A store made before documents were stored uncompressed.
            (true, Box::new(registration(true))),
        ];
        for (deflated, edit) in edits {
            let mut stored = row(&r, &entered(&r, false));
            if deflated {
                stored.doc_sealed = r
                    .key
                    .seal(&doc_aad(&stored.id), &r.load_doc(&stored).unwrap().save());
            }
            let update = server_change(&r, &stored, edit);
            let (fast, fast_arrived) = r
                .append_first_server_part(&stored, &update, 7)
                .unwrap()
                .expect("a first server part is appended");
            let (full, full_arrived) = r.merge_by_loading(stored.clone(), &update, 7).unwrap().unwrap();
            assert_same(&r, &fast, &full);
            assert_eq!(fast_arrived, full_arrived);
            // The next server change merges into the appended document.
            let next = server_change(&r, &fast, |doc| {
                record::set_hold(doc, "probable_duplicate").unwrap()
            });
            assert!(r.append_first_server_part(&fast, &next, 8).unwrap().is_none());
            let (after, _) = r.merge_update(fast.clone(), &next, 8).unwrap().unwrap();
            let (after_full, _) = r.merge_update(full.clone(), &next, 8).unwrap().unwrap();
            assert_same(&r, &after, &after_full);
            assert_eq!(
                record::read(&r.load_doc(&after).unwrap())
                    .unwrap()
                    .server
                    .hold
                    .as_deref(),
                Some("probable_duplicate")
            );
            // The appended document answers a sync as the merged one does.
            let sent = |row: &RecordRow| {
                let (heads, chunks) = r.outgoing(row).unwrap().unwrap();
                let hashes: Vec<_> = chunks
                    .iter()
                    .flat_map(|c| record::decode_changes(c).unwrap())
                    .map(|c| c.hash())
                    .collect();
                (heads, hashes)
            };
            assert!(sent(&fast) == sent(&full), "the same heads and changes to send");
        }
        let kidcs = r.list().unwrap().iter().filter(|x| x.kidc.is_some()).count();
        assert_eq!(kidcs, 0, "merged rows are not stored by this test");
    }

    #[test]
    fn any_other_update_takes_the_full_merge() {
        let (_dir, r) = store();
        let mut cases: Vec<(&str, RecordRow, wire::RecordUpdate)> = Vec::new();
        // Not approved.
        let stored = row(&r, &entered(&r, true));
        cases.push((
            "verified",
            stored.clone(),
            server_change(&r, &stored, registration(true)),
        ));
        // Made on an older document (before the approval).
        let id = entered(&r, true);
        let before = row(&r, &id);
        let old = server_change(&r, &before, registration(true));
        r.approve(&id, "registrar-01").unwrap();
        cases.push(("older heads", row(&r, &id), old));
        // A document holding another actor's change.
        let mut other = row(&r, &entered(&r, false));
        let mut doc = r.load_doc(&other).unwrap();
        let mut theirs = doc.fork().with_actor(ActorId::from([7u8; 16]));
        theirs.put(automerge::ROOT, "office", "171004").unwrap();
        doc.merge(&mut theirs).unwrap();
        other.doc_sealed = r.seal_doc(&other.id, &mut doc);
        cases.push((
            "another actor",
            other.clone(),
            server_change(&r, &other, registration(true)),
        ));
        // Two operations in the change.
        let stored = row(&r, &entered(&r, false));
        let two = server_change(&r, &stored, |doc| {
            registration(true)(doc);
            doc.put(automerge::ROOT, "office", "171004").unwrap();
        });
        cases.push(("two operations", stored, two));
        // A whole document (a snapshot).
        let stored = row(&r, &entered(&r, false));
        let mut snapshot = r.load_doc(&stored).unwrap();
        registration(true)(&mut snapshot);
        let snap = wire::RecordUpdate {
            record_id: stored.id,
            changes: vec![snapshot.save_nocompress()],
        };
        cases.push(("a snapshot", stored, snap));
        for (case, stored, update) in cases {
            assert!(
                r.append_first_server_part(&stored, &update, 7).unwrap().is_none(),
                "{case}"
            );
            let (merged, _) = r.merge_update(stored.clone(), &update, 7).unwrap().unwrap();
            let (full, _) = r.merge_by_loading(stored, &update, 7).unwrap().unwrap();
            assert_same(&r, &merged, &full);
        }
    }

    #[test]
    fn a_record_never_sent_travels_as_its_stored_bytes() {
        let (_dir, r) = store();
        let stored = row(&r, &entered(&r, false));
        let plain = r.key.open(&doc_aad(&stored.id), &stored.doc_sealed).unwrap();
        let (heads, chunks) = r.outgoing(&stored).unwrap().unwrap();
        assert_eq!(chunks, vec![plain.to_vec()], "sent as stored, without loading");
        let (loaded_heads, loaded_chunks) = r.outgoing_by_loading(&stored, &plain).unwrap().unwrap();
        assert_eq!(heads, loaded_heads);
        let hashes = |chunk: &[u8]| -> Vec<_> {
            record::decode_changes(chunk)
                .unwrap()
                .iter()
                .map(|c| c.hash())
                .collect()
        };
        assert_eq!(hashes(&chunks[0]), hashes(&loaded_chunks[0]));
        // A deflated document (stored before) is loaded, and sent as a
        // document chunk the server accepts (not deflated).
        let mut old = stored.clone();
        old.doc_sealed = r.key.seal(&doc_aad(&old.id), &r.load_doc(&old).unwrap().save());
        let (old_heads, old_chunks) = r.outgoing(&old).unwrap().unwrap();
        assert_eq!(old_heads, heads);
        assert!(!bounds::document_header(&old_chunks[0]).unwrap().deflated);
        assert!(bounds::check(&old_chunks[0], &bounds::Limits::RECORD).is_ok());
        assert_eq!(hashes(&old_chunks[0]), hashes(&chunks[0]));
    }
}
