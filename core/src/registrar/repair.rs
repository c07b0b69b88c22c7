//! `crvs repair`: a store found tampered is made usable again from what its
//! encryption still vouches for, and nothing is trusted that it does not.
//!
//! Run by the district office with the passphrase, after `crvs check`
//! named the rows. The sealed documents are authenticated each by its own
//! row, so a record is rebuilt from its document: its status and KIdC as
//! the document says, and marked to be sent again in full (the server keeps
//! what it already has, so nothing is applied twice). Bookkeeping the
//! server can re-establish is reset (the pull cursor, the acknowledgements,
//! the request counter); the server's answers then put it right. What only
//! the enrolment knows (the server's address and key, the device key, the
//! office) cannot be rebuilt: those rows are reported, and the tablet must
//! be enrolled again.

use std::collections::BTreeSet;

use rusqlite::types::Value;

use super::{Registrar, kidc_aad, lock, outbox_aad};
use crate::error::{Error, Result};
use crate::integrity::{self, Tampered};
use crate::store::{self, meta};
use crvs_schema::record;
use crvs_schema::wire::SignedChangeSet;

/// What `repair` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// Rows rebuilt or reset, by table and id or key.
    pub repaired: Vec<String>,
    /// Rows that cannot be rebuilt from what the store vouches for: they
    /// stay as they are, and `check` still names them.
    pub unrecoverable: Vec<String>,
}

/// Settings the server's answers re-establish, and what they are reset to.
fn resettable(key: &str) -> Option<Option<i64>> {
    match key {
        meta::CURSOR | meta::ACKED_SEQ | meta::REQUEST_COUNTER => Some(Some(0)),
        meta::LAST_SERVER_TIME | meta::LAST_SYNC_AT => Some(None),
        meta::NEXT_SEQ | meta::LAST_HASH => Some(None), // recomputed below
        _ => None,
    }
}

impl Registrar {
    /// Rebuilds the rows `check` finds tampered from the sealed data, in
    /// one transaction (see the module documentation). A store with
    /// nothing to repair is left alone.
    pub fn repair(&self, by: &str) -> Result<RepairReport> {
        crvs_schema::workflow::check_staff_id(by.trim()).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let _no_sync_meanwhile = lock(&self.sync_lock);
        let conn = &mut *lock(&self.conn);
        let mut report = RepairReport::default();
        let bad = integrity::tampered(conn, integrity::Scope::All)?;
        // Records whose columns disagree with their documents (edited
        // before the store had MACs) are rebuilt too.
        let mut records: BTreeSet<[u8; 16]> = BTreeSet::new();
        for row in store::all_records(conn)? {
            if !self.disagreements_with_document(&row)?.is_empty() {
                records.insert(row.id);
            }
        }
        let sum_bad = bad.contains(&Tampered::Sum);
        if bad.is_empty() && records.is_empty() {
            return Ok(report);
        }
        integrity::set_repairing(conn, true)?;
        let result = (|| {
            let tx = conn.transaction()?;
            let mut reset_chain = sum_bad;
            for t in &bad {
                let Tampered::Row(table, key) = t else { continue };
                match (*table, key) {
                    ("records", Value::Blob(id)) => {
                        if let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) {
                            records.insert(id);
                        }
                    }
                    ("outbox", Value::Integer(seq)) => {
                        let seq = *seq as u64;
                        let row = store::outbox_from(&tx, seq, 1)?.into_iter().next();
                        let sound = row.as_ref().is_some_and(|row| {
                            self.key
                                .open(&outbox_aad(seq), &row.body_sealed)
                                .ok()
                                .and_then(|b| SignedChangeSet::from_bytes(b.to_vec()).ok())
                                .is_some_and(|cs| cs.seq() == seq && cs.hash() == row.hash)
                        });
                        if sound {
                            // Sent again: the server acknowledges what it has.
                            tx.execute(
                                "UPDATE outbox SET acked_at = NULL, record_count = record_count WHERE seq = ?1",
                                [seq as i64],
                            )?;
                            reset_chain = true;
                            report.repaired.push(t.to_string());
                        } else {
                            report
                                .unrecoverable
                                .push(format!("{t} (its change set does not open)"));
                        }
                    }
                    ("kidc_evidence", Value::Blob(id)) => {
                        tx.execute("DELETE FROM kidc_evidence WHERE record_id = ?1", [id])?;
                        report.repaired.push(format!("{t} (removed)"));
                    }
                    ("chain_adoptions", Value::Integer(seq)) => {
                        tx.execute("DELETE FROM chain_adoptions WHERE seq = ?1", [seq])?;
                        reset_chain = true;
                        report.repaired.push(format!("{t} (removed)"));
                    }
                    ("meta", Value::Text(key)) => match resettable(key) {
                        Some(_) => {
                            reset_chain = true;
                            report.repaired.push(t.to_string());
                        }
                        None => report
                            .unrecoverable
                            .push(format!("{t} (only an enrolment sets it: enrol the tablet again)")),
                    },
                    _ => report.unrecoverable.push(t.to_string()),
                }
            }
            for id in &records {
                let Some(mut row) = store::get_record(&tx, id)? else {
                    continue;
                };
                let name = format!("records {}", super::RecordId(*id));
                let doc = match self.load_doc(&row) {
                    Ok(doc) => doc,
                    Err(_) => {
                        report
                            .unrecoverable
                            .push(format!("{name} (its document does not open)"));
                        continue;
                    }
                };
                let view = record::read(&doc)?;
                row.status = view.status()?.as_str().to_string();
                row.kidc_sealed = view
                    .server
                    .kidc
                    .as_ref()
                    .map(|k| self.key.seal(&kidc_aad(id), k.as_str().as_bytes()));
                // Sent again in full; the server keeps what it has.
                row.dirty = true;
                row.outboxed_heads = Vec::new();
                row.last_outbox_seq = None;
                row.set_aside_at = None;
                store::update_record(&tx, &row)?;
                report.repaired.push(name);
            }
            if reset_chain {
                // The server's answers re-establish these: every change set
                // is offered again (acknowledged again by hash), every
                // update pulled again (applied idempotently), and the
                // counter continues above the server's.
                for key in [meta::CURSOR, meta::ACKED_SEQ, meta::REQUEST_COUNTER] {
                    store::set_meta(&tx, key, 0i64)?;
                }
                for key in [meta::LAST_SERVER_TIME, meta::LAST_SYNC_AT] {
                    tx.execute("DELETE FROM meta WHERE key = ?1", [key])?;
                }
                tx.execute("UPDATE outbox SET acked_at = NULL", [])?;
                let (next, last) = match store::outbox_chain(&tx)?.last() {
                    Some((seq, hash)) => (seq + 1, hash.to_vec()),
                    None => match store::adoptions(&tx)?.last() {
                        Some((seq, hash)) => (seq + 1, hash.to_vec()),
                        None => (1, vec![0u8; 32]),
                    },
                };
                store::set_meta(&tx, meta::NEXT_SEQ, next as i64)?;
                store::set_meta(&tx, meta::LAST_HASH, last)?;
            }
            if sum_bad {
                report
                    .repaired
                    .push("integrity (rows deleted or put back cannot be named: compare `crvs list` with the paper register)".into());
            }
            integrity::rebuild_sum(&tx)?;
            tx.commit()?;
            Ok::<_, Error>(())
        })();
        integrity::set_repairing(conn, false)?;
        result?;
        report.repaired.sort();
        report.repaired.dedup();
        tracing::warn!(
            repaired = report.repaired.len(),
            unrecoverable = report.unrecoverable.len(),
            by = by.trim(),
            "store repaired"
        );
        Ok(report)
    }

    /// How a record's plaintext columns disagree with its sealed document
    /// (empty if they agree): the document or the KIdC does not open, the
    /// status or the KIdC differs, unsent changes are not marked for
    /// sending.
    pub(super) fn disagreements_with_document(&self, row: &store::RecordRow) -> Result<Vec<&'static str>> {
        let Ok(mut doc) = self.load_doc(row) else {
            return Ok(vec!["its document does not open"]);
        };
        let mut out = Vec::new();
        let view = record::read(&doc)?;
        if view.status()?.as_str() != row.status {
            out.push("status differs from its document");
        }
        let kidc = match &row.kidc_sealed {
            Some(s) => self.key.open(&kidc_aad(&row.id), s).ok().map(|k| k.to_vec()),
            None => None,
        };
        if row.kidc_sealed.is_some() && kidc.is_none() {
            out.push("its KIdC does not open");
        } else if kidc != view.server.kidc.as_ref().map(|k| k.as_str().as_bytes().to_vec()) {
            out.push("KIdC differs from its document");
        }
        if !row.dirty && row.set_aside_at.is_none() {
            let since = super::heads_from_bytes(&row.outboxed_heads)?;
            if doc
                .get_changes(&since)
                .iter()
                .any(|c| c.actor_id() == &self.actor)
            {
                out.push("unsent changes not marked for sending");
            }
        }
        Ok(out)
    }
}
