//! Rebuilding the registry from its event log (`crvs-server registry
//! rebuild [--check]`).

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Amended, RegisteredEvent, apply, apply_state, replayed};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{RegistryDump, RegistryEventRow, Storage, StorageError, WriteTx};

/// Events replayed per read of the log.
const BATCH: usize = 1000;

/// What a rebuild found. Ids and counts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    /// Events replayed.
    pub events: u64,
    /// Persons in the rebuilt registry.
    pub persons: usize,
    /// SHA-256 of the rebuilt registry's canonical form, hex.
    pub digest: String,
    /// `--check`: the live registry is the rebuilt one, byte for byte.
    pub identical: bool,
    /// `--check`: the person ids whose rows differ (or that only one side
    /// holds).
    pub differing_persons: Vec<String>,
    /// `--check`: the event log's entries that differ from their replay.
    pub differing_events: Vec<u64>,
}

/// SHA-256 of a dump's canonical text.
fn digest(dump: &RegistryDump) -> String {
    let mut h = Sha256::new();
    for (id, rows) in &dump.persons {
        h.update(id.as_bytes());
        h.update(rows);
    }
    for (seq, row) in &dump.events {
        h.update(seq.to_be_bytes());
        h.update(row);
    }
    hex::encode(h.finalize())
}

fn replay(tx: &mut dyn WriteTx, row: &RegistryEventRow, log: bool) -> Result<(), StorageError> {
    let event = replayed(row)?;
    let e = RegisteredEvent {
        record_id: row.record_id,
        registration_number: &row.registration_number,
        registered_at_ms: row.registered_at_ms,
        office: &row.office,
        event: &event,
        kidc: row.kidc,
        amends: row.amends_record_id.map(|record_id| Amended {
            record_id,
            kidc: row.amends_kidc,
        }),
        late: row.late,
    };
    if log {
        apply(tx, &e)
    } else {
        apply_state(tx, &e, row.seq)
    }
}

/// `--check`: replays the live registry's log into a fresh database in
/// `scratch_dir` (removed afterwards) and compares its canonical form
/// with the live one's. Reads the live database only.
pub fn rebuild_check(live: &dyn Storage, scratch_dir: &Path) -> Result<RebuildReport, StorageError> {
    let path = scratch_dir.join(format!("registry-check-{}.db", std::process::id()));
    let remove = |path: &Path| {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    };
    remove(&path);
    let mut events = 0u64;
    let both = (|| {
        let fresh = SqliteStorage::open(&path)?;
        let mut tx = fresh.begin()?;
        let live_dump = live.registry_snapshot(&mut |rows| {
            for row in rows {
                replay(&mut *tx, row, true)?;
            }
            events += rows.len() as u64;
            Ok(())
        })?;
        Ok::<_, StorageError>((live_dump, tx.registry_dump()?))
    })();
    remove(&path);
    let (live_dump, rebuilt) = both?;
    let mut differing_persons: Vec<String> = live_dump
        .persons
        .iter()
        .filter(|(id, rows)| rebuilt.persons.get(*id) != Some(rows))
        .map(|(id, _)| id.clone())
        .chain(
            rebuilt
                .persons
                .keys()
                .filter(|id| !live_dump.persons.contains_key(*id))
                .cloned(),
        )
        .collect();
    differing_persons.sort();
    let differing_events: Vec<u64> = live_dump
        .events
        .iter()
        .filter(|(seq, row)| rebuilt.events.get(*seq) != Some(row))
        .map(|(seq, _)| *seq)
        .chain(
            rebuilt
                .events
                .keys()
                .filter(|seq| !live_dump.events.contains_key(*seq))
                .copied(),
        )
        .collect();
    let identical = differing_persons.is_empty() && differing_events.is_empty() && live_dump == rebuilt;
    Ok(RebuildReport {
        events,
        persons: rebuilt.persons.len(),
        digest: digest(&rebuilt),
        identical,
        differing_persons,
        differing_events,
    })
}

/// Replaces the live registry with its rebuild from the event log, in one
/// transaction (the server may run: it waits for the writer).
pub fn rebuild(live: &dyn Storage) -> Result<RebuildReport, StorageError> {
    let mut tx = live.begin()?;
    tx.registry_clear()?;
    let mut after = 0;
    let mut events = 0u64;
    loop {
        let rows = tx.registry_events_after(after, BATCH)?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in &rows {
            replay(&mut *tx, row, false)?;
        }
        events += rows.len() as u64;
    }
    let dump = tx.registry_dump()?;
    tx.commit()?;
    tracing::info!(
        events,
        persons = dump.persons.len(),
        "registry rebuilt from its event log"
    );
    Ok(RebuildReport {
        events,
        persons: dump.persons.len(),
        digest: digest(&dump),
        identical: true,
        differing_persons: Vec::new(),
        differing_events: Vec::new(),
    })
}
